"""mlscale bench alltoall: the simulator table agrees with the cost model, and the MPI
part runs (its timings are not asserted: the machine is shared)."""
import pytest

from mlscale.bench import alltoall as bench
from mlscale.cli import main


def test_sim_table_shows_the_model_and_the_crossover(tmp_path, capsys):
    out = tmp_path / "a2a.md"
    assert bench.main(["--no-mpi", "--out", str(out)]) == 0
    rows = [ln for ln in out.read_text().splitlines() if ln.startswith("| ") and "/" in ln and "sim" not in ln]
    assert len(rows) == 5
    for ln in rows:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        for cell in cells[1:3]:
            sim, model = cell.split(" / ")
            assert sim == model, ln
    assert [ln.rstrip(" |").split()[-1] for ln in rows] == ["bruck"] * 3 + ["pairwise"] * 2


@pytest.mark.mpi
def test_cli_runs_the_mpi_part(capsys):
    pytest.importorskip("mpi4py")
    assert main(["bench", "alltoall", "--quick", "-n", "2"]) == 0
    text = capsys.readouterr().out
    algos = [ln.split("|")[2].strip() for ln in text.splitlines() if ln.startswith("| ") and ln.count("|") > 3
             and ln.split("|")[2].strip() in bench.ALGOS]
    assert "All-to-all on 2 MPI ranks" in text and algos == list(bench.ALGOS) * 3
