# make lab   : creates .venv on first use, installs mlscale with the course extras, starts JupyterLab
# make test  : same environment, the whole test suite, then the notebooks (nbval) under
#              one thread and each OpenBLAS kernel family the CPU runs (make test-notebooks)
# make book  : the course as a static website, build/book/html/index.html (the stored outputs,
#              nothing re-executed); tests/test_book*.py check it (make test-book)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0

.PHONY: lab test test-python test-notebooks test-fast test-book book bench doctor clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[lab,mpi,dev,book]"
	@# torch (CPU) for the torch engine's tests (tests/test_torch.py): best effort, they skip without it
	$(PY) -m pip install -q "torch==$(TORCH_VERSION)" \
	  || echo "torch not installed: tests/test_torch.py will skip (pip install 'mlscale[torch]')"
	touch $(STAMP)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks $$(test "$$(id -u)" = 0 && echo --allow-root)

# The notebooks' stored outputs must not depend on the machine: nbval runs them once with one
# thread (this CPU's own BLAS kernels), then under each other OpenBLAS kernel family this CPU
# can run (a family newer than the CPU crashes, so it is chosen from /proc/cpuinfo's flags).
NBVAL      := --nbval --nbval-sanitize-with notebooks/sanitize.cfg --nbval-cell-timeout=120 -p no:cacheprovider
ONE_THREAD := OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 NUMBA_NUM_THREADS=1
CPUFLAGS   := $(shell test "$$(uname -m)" = x86_64 && grep -m1 '^flags' /proc/cpuinfo 2>/dev/null)
CORETYPES  ?= $(if $(filter avx,$(CPUFLAGS)),Sandybridge) $(if $(filter avx2,$(CPUFLAGS)),Haswell)

test: test-python test-notebooks

test-python: $(STAMP)
	$(PY) -m pytest -q -ra tests -p no:cacheprovider

test-notebooks: $(STAMP)
	@echo "== notebooks, one thread"
	$(ONE_THREAD) $(PY) -m pytest -q -ra notebooks/*.ipynb $(NBVAL)
	@set -e; for c in $(CORETYPES); do \
	  echo "== notebooks, OPENBLAS_CORETYPE=$$c"; \
	  OPENBLAS_CORETYPE=$$c $(PY) -m pytest -q -ra notebooks/*.ipynb $(NBVAL); \
	done

test-fast: $(STAMP)
	$(PY) -m pytest -q -x tests

# Sphinx + myst-nb + sphinx-book-theme (why: docs/book/conf.py); incremental after the first build
book: $(STAMP)
	$(PY) tools/build_book.py

# the site without a browser, then in headless Chromium (skipped, saying how to install it, without)
test-book: $(STAMP)
	$(PY) -m pytest -q -ra tests/test_book.py tests/test_book_browser.py -p no:cacheprovider

doctor: $(STAMP)
	$(VENV)/bin/mlscale doctor

bench: $(STAMP)
	$(VENV)/bin/mlscale bench all

clean:
	rm -rf $(VENV) build dist .pytest_cache
