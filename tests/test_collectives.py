"""Every collective, every algorithm, against the NumPy reference on world sizes 1-8,
awkward lengths (smaller than p, not divisible by p), float32/float64/int32, every op.
One test body (``run_collective_checks``) serves every engine: tests/test_mpi.py runs it
under mpiexec too."""
import numpy as np
import pytest

import mlscale as ms
from mlscale.collectives import ALGORITHMS

WORLD_SIZES = [1, 2, 3, 4, 5, 6, 7, 8]
LENGTHS = [1, 3, 7, 50]
DTYPES = [np.float32, np.float64, np.int32]
OPS = ["sum", "mean", "max", "min", "prod"]


def rank_input(rank, n, dtype, op):
    """Deterministic, rank-dependent data; small ints for prod so nothing overflows."""
    rng = np.random.default_rng(1000 * rank + n)
    if op == "prod":
        return rng.integers(1, 3, size=n).astype(dtype)
    if np.dtype(dtype).kind == "i":
        return rng.integers(-50, 50, size=n).astype(dtype)
    return rng.standard_normal(n).astype(dtype)


def reference(p, n, dtype, op):
    xs = np.stack([rank_input(r, n, dtype, op) for r in range(p)])
    f = {"sum": np.sum, "mean": np.mean, "max": np.max, "min": np.min, "prod": np.prod}[op]
    out = f(xs, axis=0)
    return out if op == "mean" else out.astype(dtype)


def assert_matches(got, want, dtype, what):
    assert got.shape == want.shape, (what, got.shape, want.shape)
    if np.dtype(dtype).kind == "i" and got.dtype.kind == "i":
        np.testing.assert_array_equal(got, want, err_msg=what)
    else:
        tol = 1e-5 if np.dtype(dtype) == np.float32 else 1e-12
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol, err_msg=what)


def run_collective_checks(comm, algorithms):
    """The one test body: runs on every rank of any engine and returns the number of
    checks made (asserting on the way)."""
    p, r = comm.world_size, comm.rank
    checks = 0
    for n in LENGTHS:
        for dtype in DTYPES:
            for op in OPS:
                x = rank_input(r, n, dtype, op)
                want = reference(p, n, dtype, op)
                for a in algorithms["all_reduce"]:
                    got = comm.all_reduce(x, op=op, algorithm=a)
                    assert_matches(got, want, dtype, f"all_reduce {a} p={p} n={n} {dtype} {op}")
                    checks += 1
                cut = np.array_split(np.arange(n), p)[r]
                for a in algorithms["reduce_scatter"]:
                    got = comm.reduce_scatter(x, op=op, algorithm=a)
                    assert_matches(got, want[cut], dtype, f"reduce_scatter {a} p={p} n={n} {op}")
                    checks += 1
                for a in algorithms["reduce"]:
                    root = (n + 1) % p
                    got = comm.reduce(x, root=root, op=op, algorithm=a)
                    if r == root:
                        assert_matches(got, want, dtype, f"reduce {a} root={root} p={p} n={n} {op}")
                    else:
                        assert got is None
                    checks += 1
            x = rank_input(r, n, dtype, "sum")
            for a in algorithms["broadcast"]:
                root = n % p
                got = comm.broadcast(x, root=root, algorithm=a)
                assert_matches(got, rank_input(root, n, dtype, "sum"), dtype, f"broadcast {a} p={p}")
                checks += 1
            # all_gather with lengths that differ between ranks (Allgatherv)
            mine = rank_input(r, n + r % 2, dtype, "sum")
            full = np.concatenate([rank_input(q, n + q % 2, dtype, "sum") for q in range(p)])
            for a in algorithms["all_gather"]:
                got = comm.all_gather(mine, algorithm=a)
                assert_matches(got, full, dtype, f"all_gather {a} p={p} n={n}")
                checks += 1
    # 2-D arrays keep their shape; gather/scatter with ragged pieces
    x2 = np.full((3, 2), float(r))
    got = comm.all_reduce(x2, algorithm=algorithms["all_reduce"][0])
    assert got.shape == (3, 2) and np.all(got == sum(range(p)))
    parts = comm.gather(np.arange(r + 1), root=0)
    if r == 0:
        assert [len(q) for q in parts] == list(range(1, p + 1))
    pieces = [np.full(q + 2, q) for q in range(p)] if r == 0 else None
    mine = comm.scatter(pieces, root=0)
    assert np.array_equal(mine, np.full(r + 2, r))
    comm.barrier()
    return checks + 3


@pytest.mark.parametrize("p", WORLD_SIZES)
def test_every_collective_every_algorithm(p):
    algos = {k: sorted(v) + [None] for k, v in ALGORITHMS.items()}
    res = ms.launch(run_collective_checks, p, args=(algos,))
    assert all(c == res[0] for c in res) and res[0] > 500


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS["all_reduce"]))
def test_all_ranks_get_identical_bits(algorithm):
    def prog(comm):
        x = np.random.default_rng(comm.rank).standard_normal(101).astype(np.float32)
        return comm.all_reduce(x, algorithm=algorithm)

    res = ms.launch(prog, 6)
    for y in res[1:]:
        assert y.tobytes() == res[0].tobytes()


def test_reduce_scatter_then_all_gather_is_all_reduce():
    def prog(comm):
        x = np.arange(23, dtype=np.float64) * (comm.rank + 1)
        part = comm.reduce_scatter(x, algorithm="ring")
        return comm.all_gather(part, algorithm="ring"), comm.all_reduce(x, algorithm="ring")

    for a, b in ms.launch(prog, 5):
        np.testing.assert_allclose(a, b)


def test_large_vector_ring_sum_is_exact_for_integers():
    def prog(comm):
        return comm.all_reduce(np.arange(100_003, dtype=np.int64) * comm.rank, algorithm="ring")

    res = ms.launch(prog, 7)
    np.testing.assert_array_equal(res[3], np.arange(100_003, dtype=np.int64) * 21)


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS["all_reduce"]) + [None])
def test_out_receives_the_result(algorithm):
    def prog(comm):
        x = np.arange(11, dtype=np.float32) + comm.rank
        out = np.zeros(11, np.float32)
        y = comm.all_reduce(x, algorithm=algorithm, out=out)
        inplace = comm.all_reduce(x, algorithm=algorithm, out=x)  # x's own buffer
        return y is out, out, inplace is x, x

    for same, out, same_x, x in ms.launch(prog, 3):
        want = np.arange(11, dtype=np.float32) * 3 + 3
        assert same and same_x
        np.testing.assert_array_equal(out, want)
        np.testing.assert_array_equal(x, want)


def test_out_of_the_wrong_dtype_is_a_clear_error():
    with pytest.raises(ms.CommError, match="mean of integers is float64"):
        ms.launch(lambda c: c.all_reduce(np.ones(3, np.int32), op="mean", out=np.zeros(3, np.int32)), 2)
