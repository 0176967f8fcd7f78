# make lab   : creates .venv on first use, installs mlscale with the course extras, starts JupyterLab
# make test  : same environment, the whole test suite, notebooks included (nbval)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: lab test test-fast bench doctor clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[lab,mpi,dev]"
	touch $(STAMP)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks $$(test "$$(id -u)" = 0 && echo --allow-root)

test: $(STAMP)
	$(PY) -m pytest -q -ra tests notebooks/*.ipynb --nbval --nbval-sanitize-with notebooks/sanitize.cfg --nbval-cell-timeout=120 -p no:cacheprovider

test-fast: $(STAMP)
	$(PY) -m pytest -q -x tests

doctor: $(STAMP)
	$(VENV)/bin/mlscale doctor

bench: $(STAMP)
	$(VENV)/bin/mlscale bench all

clean:
	rm -rf $(VENV) build dist .pytest_cache
