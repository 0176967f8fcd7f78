"""Issue 9: a collective's own send above the eager limit (rendezvous) that never meets
its receive is reported as part of that collective, naming it and its algorithm, like
the collective's receives already are, not as a bare ``isend().wait()``."""
import numpy as np
import pytest

import mlscale as ms
from mlscale.comm.errors import CommError, DeadlockError, RankFailure

NET = ms.NetworkModel(eager_limit=4096)  # 2,000 float64 = 16,000 B: rendezvous


def _disagree(comm, algorithm, n):
    """Ranks disagree with the checks off: rank 0 runs an all-reduce, rank 1 a small
    broadcast from itself. Rank 0 receives rank 1's message on the collectives' tag,
    then waits for ever for rank 1 to receive its large half (rendezvous)."""
    comm.check = False
    if comm.rank == 0:
        return comm.all_reduce(np.ones(n), algorithm=algorithm)
    return comm.broadcast(np.ones(10), root=1, algorithm="linear")


@pytest.mark.parametrize("algorithm, nbytes", [
    ("ring", 8000), ("recursive_doubling", 16000), ("rabenseifner", 8000),  # a half, the whole, a half
])
def test_a_rendezvous_send_inside_a_collective_that_never_matches_names_the_collective(algorithm, nbytes):
    with pytest.raises(DeadlockError) as e:
        ms.launch(_disagree, 2, args=(algorithm, 2000), network=NET)
    msg = str(e.value)
    line = [ln for ln in msg.splitlines() if ln.strip().startswith("rank 0 ")]
    assert len(line) == 1, msg
    assert f"all_reduce #1 (algorithm={algorithm!r}): isend(dst=1).wait()" in line[0], msg
    assert "above the eager limit (4096 B)" in line[0] and f": {nbytes} B is" in line[0], msg
    assert "rank 1 finished" in msg


def test_the_collective_is_numbered_as_it_is_called():
    def program(comm):
        comm.all_reduce(np.ones(3))  # collective #1 (checked, agreed)
        return _disagree(comm, "ring", 2000)

    with pytest.raises(DeadlockError, match=r"all_reduce #2 \(algorithm='ring'\): isend\(dst=1\)\.wait\(\)"):
        ms.launch(program, 2, network=NET)


def test_with_the_checks_on_the_disagreement_is_refused_before_any_message():
    """The control: the argument checks (on by default) name the disagreement instead."""
    def program(comm):
        if comm.rank == 0:
            return comm.all_reduce(np.ones(2000), algorithm="ring")
        return comm.broadcast(np.ones(10), root=1, algorithm="linear")

    with pytest.raises(CommError, match="ranks disagree") as e:
        ms.launch(program, 2, network=NET)
    assert "collective: rank 0 passed 'all_reduce', rank 1 passed 'broadcast'" in str(e.value) or \
        "collective: rank 1 passed 'broadcast', rank 0 passed 'all_reduce'" in str(e.value)
    assert e.value.rank is not None


def test_a_users_own_isend_is_still_reported_as_isend_wait():
    def program(comm):
        if comm.rank == 0:
            comm.isend(np.ones(2000), 1, tag=4).wait()  # never received
        return comm.rank

    with pytest.raises(DeadlockError) as e:
        ms.launch(program, 2, network=NET)
    msg = str(e.value)
    assert "rank 0 (t=0 s) waits in isend().wait(): 16000 B is above the eager limit" in msg
    assert "all_reduce" not in msg


def test_a_receiver_that_dies_is_named_with_the_collective():
    """A rendezvous send in a collective to a rank that dies: the RankFailure says
    which collective was sending."""
    net = ms.NetworkModel(eager_limit=4096, failures={1: 5e-6})

    def program(comm):
        comm.check = False
        if comm.rank == 0:
            try:
                comm.all_reduce(np.ones(2000), algorithm="ring")
            except RankFailure as err:
                return str(err)
            return None
        comm.broadcast(np.ones(10), root=1, algorithm="linear")
        comm.compute(1.0)
        return None

    res = ms.launch(program, 2, network=net)
    assert res[0] is not None and "all_reduce #1 (algorithm='ring'): isend(dst=1).wait(): rank 1 died" in res[0]
