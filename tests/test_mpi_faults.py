"""Issue 9 on the ``mpi`` engine: no silent exit, the right rank named, clear errors,
nothing left in the temp directory. Each case ends in bounded time."""
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import pytest

import mlscale as ms
from mlscale.comm.errors import CommError, RankFailure

pytestmark = pytest.mark.mpi

from _mpi_batch import require_mpi  # noqa: E402

MPIEXEC = require_mpi()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _leftovers():
    tmp = tempfile.gettempdir()
    names = set(os.listdir(tmp)) | ({n for n in os.listdir("/tmp")} if os.path.isdir("/tmp") else set())
    return {n for n in names if n.startswith(("mlscale-mpi-", "hydra_hwloc_xmlfile_"))}


@pytest.fixture(scope="module", autouse=True)
def nothing_left_behind():
    """After every test here (aborts, kills, SIGTERM), no new temp folder or hydra file."""
    before = _leftovers()
    yield
    time.sleep(0.3)
    new = _leftovers() - before
    assert not new, f"left in the temp directory: {sorted(new)}"


def _exit_or_die(comm, how):
    if comm.rank == 1:
        if how == "sys.exit":
            sys.exit(3)
        if how == "os._exit":
            os._exit(5)
        if how == "SIGKILL":
            os.kill(os.getpid(), signal.SIGKILL)
    comm.barrier()  # the others would wait here forever
    return comm.rank


def test_sys_exit_in_a_rank_is_an_error_naming_the_rank_and_code():
    with pytest.raises(CommError, match=r"rank 1 of 3 called sys.exit\(3\) \(mpi engine\)"):
        ms.launch(_exit_or_die, 3, args=("sys.exit",), backend="mpi", timeout=60)


@pytest.mark.parametrize("how, said", [("os._exit", r"rank 1 called os._exit\(5\)"),
                                       ("SIGKILL", r"rank 1 was killed by signal SIGKILL")])
def test_a_rank_that_dies_is_named_with_how(how, said):
    with pytest.raises(RankFailure, match=said) as e:
        ms.launch(_exit_or_die, 3, args=(how,), backend="mpi", timeout=60)
    assert e.value.failed_rank == 1


def _two_raise(comm):
    if comm.rank in (1, 2):
        raise ValueError(f"rank {comm.rank} fails")
    time.sleep(5)  # stopped by the abort long before


def test_several_ranks_raising_are_all_listed():
    with pytest.raises(ValueError) as e:
        ms.launch(_two_raise, 3, backend="mpi", timeout=60)
    assert e.value.rank in (1, 2)
    other = 3 - e.value.rank
    notes = "\n".join(getattr(e.value, "__notes__", []))
    # both reached their raise before the abort: usually both recorded; at least the first
    assert f"rank {e.value.rank} of 3" in notes
    if f"[{other}]" in notes:
        assert f"ranks [{other}] raised too" in notes


def test_mpiexec_args_as_one_string_is_a_clear_error():
    with pytest.raises(CommError, match=r"mpiexec_args='-genv X 1' is one string.*\['-genv', 'X', '1'\]"):
        ms.launch(lambda c: None, 2, backend="mpi", mpiexec_args="-genv X 1")


def test_default_timeout_is_documented_and_settable(monkeypatch):
    from mlscale.comm import _mpi_launch as L

    monkeypatch.delenv(L.TIMEOUT_ENV, raising=False)
    assert L.default_timeout() == 300.0
    monkeypatch.setenv(L.TIMEOUT_ENV, "12.5")
    assert L.default_timeout() == 12.5
    monkeypatch.setenv(L.TIMEOUT_ENV, "none")
    assert L.default_timeout() is None
    monkeypatch.setenv(L.TIMEOUT_ENV, "soon")
    with pytest.raises(CommError, match="MLSCALE_MPI_TIMEOUT='soon'"):
        L.default_timeout()


def test_the_env_timeout_ends_a_hanging_launch(monkeypatch):
    monkeypatch.setenv("MLSCALE_MPI_TIMEOUT", "1.5")
    t0 = time.perf_counter()
    with pytest.raises(ms.TimeoutError, match="timeout=1.5"):
        ms.launch(lambda c: c.recv((c.rank + 1) % 2), 2, backend="mpi")
    assert time.perf_counter() - t0 < 30


LAUNCHER = """
import sys, numpy as np, mlscale as ms
sys.path.insert(0, {root!r})
def hang(comm):
    comm.recv((comm.rank + 1) % 2)
print("launching", flush=True)
ms.launch(hang, 2, backend="mpi", timeout=60)
"""


def test_a_launcher_killed_by_sigterm_leaves_no_temp_folder(tmp_path):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = dict(os.environ, TMPDIR=str(tmpdir))
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER.format(root=ROOT)], env=env,
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout.readline().strip() == "launching"
        t0 = time.perf_counter()
        while not any(n.startswith("mlscale-mpi-") for n in os.listdir(tmpdir)):
            assert time.perf_counter() - t0 < 20
            time.sleep(0.05)
        time.sleep(1.0)  # the ranks are up and waiting
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == -signal.SIGTERM  # it still ends as SIGTERM says
    finally:
        if proc.poll() is None:
            proc.kill()
    assert os.listdir(tmpdir) == []


SCRIPT = """
import sys, numpy as np
import mlscale as ms
comm = ms.comm.MPIComm()
if comm.rank == 1:
    sys.exit(4)
comm.all_reduce(np.ones(2))  # the others would wait here forever
"""


def test_sys_exit_under_plain_mpiexec_aborts_the_job_naming_the_rank(tmp_path):
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(SCRIPT))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLSCALE_MPI", "PMI_", "HYDRA_"))}
    env["PYTHONPATH"] = ROOT
    before = _leftovers()
    proc = subprocess.run([MPIEXEC, "-n", "3", sys.executable, str(path)], capture_output=True,
                          text=True, timeout=60, env=env, cwd=ROOT)
    # a plain mpiexec (not ours) that aborts leaves hydra's topology file in /tmp: MPICH's
    # behaviour, which ms.launch avoids by giving hydra an HWLOC_XMLFILE; remove it here
    for name in _leftovers() - before:
        if name.startswith("hydra_hwloc_xmlfile_"):
            os.remove(os.path.join("/tmp", name))
    assert proc.returncode != 0
    assert "rank 1 of 3 called sys.exit(4)" in proc.stderr


WRITER = """
import os, sys, time
d = sys.argv[1]
with open(os.path.join(d, "pid7"), "w") as f:
    f.write(str(os.getpid()))
print("up", flush=True)
i = 0
while True:  # a rank that outlived mpiexec, still writing its result files
    try:
        with open(os.path.join(d, f"rank{i % 50}.pkl"), "wb") as f:
            f.write(b"x")
    except OSError:
        pass
    i += 1
"""


def test_the_temp_folder_goes_even_while_a_late_rank_writes_into_it(tmp_path):
    from mlscale.comm import _mpi_launch as L
    d = tempfile.mkdtemp(prefix="mlscale-mpi-", dir=tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", WRITER, d], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "up"
        L._remove_dir(d)
        assert not os.path.exists(d)
        assert proc.wait(10) == -signal.SIGKILL  # it was stopped: it named this folder
    finally:
        if proc.poll() is None:
            proc.kill()


def test_hydras_report_is_read_when_other_output_lands_inside_it():
    from mlscale.comm import _mpi_launch as L
    text = ("=====\n=   BAD TERMINATION OF ONE OF YOUR APPLICATION PROCESSES\n[0] rank 0 says hi\n"
            "=   PID 4242 RUNNING AT vm\n=   EXIT CODE: 9\n")
    assert L._BAD_PID.search(text).group(1) == "4242"


def test_ranks_seen_gone_together_prefer_the_one_that_was_not_waiting(tmp_path):
    """Under load the launcher may see the rank that died and one hydra killed in the same
    wake-up; the killed one was waiting (its state board says so), the dead one was running."""
    from mlscale.comm import _mpi_launch as L
    from mlscale.comm import _mpi_state

    for r in range(3):
        (tmp_path / f"pid{r}").write_text(str(1000 + r))
        b = _mpi_state.Board(str(tmp_path / f"state{r}"))
        if r != 1:
            b.enter("barrier", [q for q in range(3) if q != r])  # ranks 0 and 2 wait in a barrier
    hydra = ("BAD TERMINATION OF ONE OF YOUR APPLICATION PROCESSES\n=   PID 1002 RUNNING AT vm\n"
             "YOUR APPLICATION TERMINATED WITH THE EXIT STRING: Killed (signal 9)\n")
    first, how, others = L._how_died(str(tmp_path), 3, 1, [hydra], {1: 1, 2: 1}, [0, 1, 2])
    assert first == 1 and "SIGKILL" in how and others == [0, 2]
    # all waiting (or no boards): hydra's PID settles it, as before
    first, _, _ = L._how_died(str(tmp_path), 3, 1, [hydra], {0: 1, 2: 1}, [0, 1, 2])
    assert first == 2
