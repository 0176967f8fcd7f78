"""Issue 9 (speed): without a wall-clock limit a waiting rank resumes the next one
itself (Simulator._switch_out) instead of going through the scheduler's loop. The
order of steps must be the scheduler's: a run with ``timeout=`` (every step is the
scheduler's) and one without give the same trace, clocks and bits."""
import numpy as np
import pytest

import mlscale as ms
from mlscale.comm.errors import DeadlockError

NETS = {
    "default": None,
    "cluster": ms.NetworkModel.cluster(2),
    "rendezvous": ms.NetworkModel(alpha=2e-6, beta=1e-9, gamma=1e-10, eager_limit=512),
}


def _program(comm):
    rng = np.random.default_rng(comm.rank)
    x = rng.standard_normal(97)
    out = [comm.all_reduce(x, algorithm=a) for a in ("ring", "tree", "recursive_doubling", "rabenseifner")]
    comm.compute(1e-6 * comm.rank)
    out.append(comm.all_gather(x[: 3 + comm.rank]))
    out.append(comm.all_to_all(np.arange(4.0 * comm.world_size) + comm.rank))
    sub = comm.split(comm.rank % 2)
    out.append(sub.all_reduce(x, algorithm="ring"))
    req = comm.start(lambda s, v: s.all_reduce(v), x)
    comm.compute(2e-5)
    out.append(req.wait())
    p, r = comm.world_size, comm.rank
    out.append(comm.sendrecv(x, (r + 1) % p, (r - 1) % p, tag=3))
    return out


def _record(res):
    return (res.clocks, list(res.trace.messages), list(res.trace.spans))


@pytest.mark.parametrize("net", sorted(NETS))
@pytest.mark.parametrize("p", [1, 3, 5, 8])
def test_ranks_resuming_each_other_take_the_schedulers_steps(p, net):
    direct = ms.launch(_program, p, network=NETS[net])
    hub = ms.launch(_program, p, network=NETS[net], timeout=600)  # every step through the scheduler
    assert _record(direct) == _record(hub)
    for a, b in zip(direct, hub):
        for u, v in zip(a, b):
            assert u.dtype == v.dtype and np.array_equal(u, v)
    ref = sum(np.random.default_rng(r).standard_normal(97) for r in range(p))
    np.testing.assert_allclose(direct[0][0], ref, rtol=1e-12, atol=1e-12)


def test_a_rank_that_fails_after_being_resumed_by_another_is_the_one_named():
    """A rank resumed by another rank (not by the scheduler) raises: the error names it
    and the ranks behind it in virtual time still run (then the run ends)."""
    def program(comm):
        for _ in range(3):
            comm.all_reduce(np.ones(4), algorithm="ring")
        if comm.rank == 2:
            raise ValueError("boom on 2")
        comm.barrier()  # the others then wait for rank 2 for ever
        return comm.rank

    with pytest.raises(ValueError, match="boom on 2") as e:
        ms.launch(program, 4)
    assert e.value.rank == 2


def test_a_deadlock_is_still_found_when_ranks_resume_each_other():
    def program(comm):
        comm.all_reduce(np.ones(4), algorithm="ring")
        return comm.recv((comm.rank + 1) % comm.world_size)

    with pytest.raises(DeadlockError) as e:
        ms.launch(program, 3)
    assert all(f"rank {r} (t=" in str(e.value) for r in range(3))


def test_a_death_at_the_top_of_the_heap_is_the_schedulers():
    net = ms.NetworkModel(failures={1: 35e-6})

    def program(comm):
        got = []
        try:
            for _ in range(10):
                got.append(comm.all_reduce(np.ones(2), algorithm="ring")[0])
        except ms.RankFailure as err:
            return len(got), err.failed_rank
        return len(got), None

    direct = ms.launch(program, 3, network=net)
    hub = ms.launch(program, 3, network=net, timeout=600)
    assert list(direct) == list(hub) and direct.clocks == hub.clocks
    assert direct.failed == {1: 35e-6}
    assert direct[0][1] == 1 and direct[0][0] < 10
