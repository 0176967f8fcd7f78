"""mlscale bench allreduce: the torch.distributed (gloo) rows stand beside MPI's in one run,
every figure a positive number (timings are not asserted: the machine is shared), and
``--no-torch`` leaves them out. Skipped without torch or mpiexec."""
import re

import pytest

from mlscale.bench import allreduce as bench

pytestmark = pytest.mark.mpi
pytest.importorskip("torch", reason='the torch part needs PyTorch: pip install "mlscale[torch]"')

from _mpi_batch import require_mpi  # noqa: E402

require_mpi()

NUM = re.compile(r"^(\d+(\.\d+)?) ?(us|ms|s|x)?$")


def _torch_rows(text):
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("**torch.distributed (gloo"))
    rows = [ln for ln in lines[start + 1:] if ln.startswith("| ")]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    body = []
    for ln in rows[1:]:
        if set(ln.replace("|", "").strip()) <= set(":- "):
            continue
        if not re.match(r"\| \d", ln):
            break
        body.append([c.strip() for c in ln.strip("|").split("|")])
    return header, body


def test_torch_rows_beside_mpi_positive_numbers(tmp_path):
    out = tmp_path / "ar.md"
    assert bench.main(["--quick", "-n", "2", "--no-sim", "--out", str(out)]) == 0
    text = out.read_text()
    assert "All-reduce on 2 MPI ranks" in text and "torch.distributed: gloo, torch" in text
    header, body = _torch_rows(text)
    assert header[:3] == ["size", "gloo median", "gloo busbw"] and "ring on torch / gloo" in header
    assert "MPI / gloo" in header and "ring on MPI / gloo" in header
    assert [r[0] for r in body] == [bench.fmt_bytes(n) for n in bench.QUICK_SIZES]
    for row in body:
        for cell in row[1:]:
            m = NUM.match(cell)
            assert m, f"not a number: {cell!r} in {row}"
        # the ratios and the large sizes' bandwidths are > 0 (small sizes may print 0.00 GB/s)
        assert all(float(NUM.match(c).group(1)) > 0 for c in row[-3:]), row
        assert float(NUM.match(row[1]).group(1)) > 0


def test_no_torch_leaves_the_torch_part_out(tmp_path):
    out = tmp_path / "ar.md"
    assert bench.main(["--quick", "-n", "2", "--no-sim", "--no-mpi", "--no-torch", "--out", str(out)]) == 0
    assert "gloo" not in out.read_text()
