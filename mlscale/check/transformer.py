"""Checkers for the transformers-at-scale exercises (notebook 12).

1. ``mesh_coordinates(fn)``: the learner writes ``fn(rank, sizes) -> coords``, the
   coordinates of a rank on a row-major (dp, pp, tp) mesh (last dim fastest, as
   ``torch.distributed.init_device_mesh`` and ``mlscale.parallel.mesh_coords`` number
   it), checked on every rank of several meshes, 1-D to 4-D, sizes 1 included.
2. ``sp_reduce_scatter(fn)``: the learner writes Megatron SP's g-bar for one sub-block
   (Korthikanti et al. 2022, section 4.2.2),

       def fn(comm, partial):   # partial (batch, seq, d): this rank's partial sum
           ...                  # -> (batch, seq / t, d): MY tokens of the sum over ranks

   checked on 1, 2, 3 and 4 simulated ranks against the sum computed in one process,
   with exactly one reduce-scatter and no other collective (the all-reduce of plain
   tensor parallelism moves the same bytes but leaves every token on every rank).
3. ``fsdp_forward(fn)``: the learner writes the ZeRO-3 / FSDP forward of a stack of layers
   (Rajbhandari et al. 2020, section 5.3; torch FSDP's unshard/reshard),

       def fn(comm, shards, layers, x):   # shards[i]: my piece of layer i's flat params
           ...                            # layers[i](params, x): layer i on its FULL params

   checked on 1 to 5 simulated ranks (shards that do not divide evenly included): each
   layer's parameters gathered with one all_gather just before it runs (prefetching the next
   one is fine, synchronously or on ``comm.start``'s communication stream), never the whole
   model at once, and freed after use (the checker holds weak references to what each layer
   was given: a gathered layer still alive when a later one runs, or after the forward, is
   memory ZeRO-3 exists to save).
"""
from __future__ import annotations

import gc
import weakref

import numpy as np

from ..comm import launch
from ..parallel.three_d import mesh_coords
from .core import CheckResult, register, try_case
from .parallel import _CountingComm

MESH_HINT = """\
Row-major, last dimension fastest: peel the sizes off from the END, like digits of a
number written in mixed radix (tp is the ones digit):
    coords = []
    for n in reversed(sizes):
        coords.append(rank % n)
        rank //= n
    return tuple(reversed(coords))
So on (dp, pp, tp) = (2, 2, 2), rank 5 = 1*4 + 0*2 + 1 is at (1, 0, 1).
Still stuck? from mlscale.check import solution; solution("mesh_coordinates")"""

SP_HINT = """\
comm.reduce_scatter(x) sums x over the ranks and gives rank r chunk r of the FLATTENED
result (np.array_split). Chunks must be whole tokens: move the sequence to the front,
(seq, batch, d), so that the first seq/t rows are rank 0's tokens:
    s_first = np.ascontiguousarray(partial.swapaxes(0, 1))      # (seq, batch, d)
    mine = comm.reduce_scatter(s_first.reshape(-1), op="sum")   # my seq/t tokens, flat
    b, s, d = partial.shape
    return mine.reshape(s // comm.world_size, b, d).swapaxes(0, 1)
Still stuck? from mlscale.check import solution; solution("sp_reduce_scatter")"""


FSDP_HINT = """\
One layer at a time: gather its parameters, run it, let them go. comm.all_gather(shard)
concatenates every rank's shard in rank order (uneven shards too), which is exactly the
layer's flat parameter vector:
    for shard, layer in zip(shards, layers):
        params = comm.all_gather(shard)   # the whole layer, on every rank, for a moment
        x = layer(params, x)
        del params                        # ZeRO-3: free it; the backward gathers it again
    return x
Still stuck? from mlscale.check import solution; solution("fsdp_forward")"""


def fsdp_forward_solution(comm, shards, layers, x):
    """ZeRO-3 forward: gather each layer's parameters just before it runs, free them after."""
    for shard, layer in zip(shards, layers):
        params = comm.all_gather(shard)  # the layer's flat parameters, in rank order
        x = layer(params, x)
        del params  # the backward gathers them again
    return x


def mesh_coordinates_solution(rank, sizes):
    """Row-major coordinates of ``rank`` on a mesh of ``sizes`` (last dim fastest)."""
    coords = []
    for n in reversed(sizes):
        coords.append(rank % n)
        rank //= n
    return tuple(reversed(coords))


def sp_reduce_scatter_solution(comm, partial):
    """g-bar of sequence parallelism: sum the partial outputs, keep my tokens."""
    b, s, d = partial.shape
    s_first = np.ascontiguousarray(partial.swapaxes(0, 1))  # (seq, batch, d): tokens are whole chunks
    mine = comm.reduce_scatter(s_first.reshape(-1), op="sum")  # my seq/t tokens of the sum, flat
    return mine.reshape(s // comm.world_size, b, d).swapaxes(0, 1)  # (batch, seq/t, d)


MESHES = ((8,), (2, 4), (4, 2), (2, 2, 2), (1, 2, 3), (3, 1, 2), (2, 3, 1, 2))


def mesh_coordinates(fn, verbose=True):
    """Check ``fn(rank, sizes) -> coords`` on every rank of several meshes."""
    res = CheckResult("mesh_coordinates")
    for sizes in MESHES:
        n = int(np.prod(sizes))
        want = [mesh_coords(r, sizes) for r in range(n)]

        def judge(got, sizes=sizes, want=want):
            return _judge_mesh(got, sizes, want)

        if not try_case(res, f"sizes={sizes}", lambda sizes=sizes, n=n: [fn(r, sizes) for r in range(n)], judge):
            return res.done(verbose)
    return res.done(verbose)


def _column_major(rank, sizes):
    out = []
    for n in sizes:
        out.append(rank % n)
        rank //= n
    return tuple(out)


def _judge_mesh(got, sizes, want):
    """The first wrong rank, and which usual mistake the whole mesh's answers show."""
    k = len(sizes)
    ints = []
    for r, g in enumerate(got):
        if g is None:
            return f"rank {r}: returned None; return a tuple of {k} coordinates"
        try:
            ints.append(tuple(int(c) for c in g))
        except (TypeError, ValueError):
            return f"rank {r}: returned {g!r}; return a tuple of {k} integer coordinates"
        if len(ints[-1]) != k:
            return f"rank {r}: returned {len(ints[-1])} coordinates, expected {k} (one per dimension of {sizes})"
    if ints == want:
        return None
    r = next(i for i, (g, w) in enumerate(zip(ints, want)) if g != w)
    why = "row-major: the last dimension varies fastest"
    if ints == [w[::-1] for w in want]:
        why = "the right coordinates in reverse order: peeling sizes off from the end, reverse the list at the end"
    elif ints == [_column_major(i, sizes) for i in range(len(ints))]:
        why = "the first dimension varies fastest (column-major); row-major: the last dimension varies fastest"
    elif ints == [tuple(i % n for n in sizes) for i in range(len(ints))] or \
            ints == [tuple(i % n for n in reversed(sizes))[::-1] for i in range(len(ints))]:
        why = "each coordinate is rank % n of the whole rank: divide (rank //= n) after taking each digit"
    elif any(not 0 <= c < n for g in ints for c, n in zip(g, sizes)):
        why = "a coordinate outside 0..size-1 of its dimension"
    return f"rank {r}: got {ints[r]}, expected {want[r]} ({why})"


def sp_reduce_scatter(fn, world_sizes=(1, 2, 3, 4), verbose=True):
    """Check ``fn(comm, partial) -> my tokens of the sum`` with one reduce-scatter."""
    res = CheckResult("sp_reduce_scatter")
    for t in world_sizes:
        for b, s, d in ((2, 4 * t, 3), (1, t, 5), (3, 2 * t, 1)):
            rng = np.random.default_rng(100 * t + s + d)
            parts = rng.standard_normal((t, b, s, d))
            total = parts.sum(axis=0)

            def prog(comm, parts=parts):
                counted = _CountingComm(comm)
                return fn(counted, parts[comm.rank].copy()), counted.calls

            def judge(out, total=total, t=t, s=s):
                n = s // t
                calls = out[0][1]  # the collectives first: a wrong one explains wrong values too
                if {k: v for k, v in calls.items() if k != "reduce_scatter"}:
                    return f"called {calls}: g-bar needs exactly one reduce_scatter and nothing else"
                if calls.get("reduce_scatter", 0) != 1:
                    return f"called reduce_scatter {calls.get('reduce_scatter', 0)} times; exactly one is needed"
                for r, (y, _) in enumerate(out):
                    if y is None:
                        return f"rank {r} returned None: return my tokens of the sum, (batch, seq/t, d)"
                    y = np.asarray(y)
                    want = total[:, r * n:(r + 1) * n]
                    if y.shape != want.shape:
                        swapped = y.shape == (n, b, d) and (n, b) != (b, n)
                        return (f"rank {r}: shape {y.shape}, expected {want.shape} (batch, seq/t = {n}, d)"
                                + (": that is (seq/t, batch, d); swap the axes back, .swapaxes(0, 1)"
                                   if swapped else ""))
                    if not np.allclose(y, want, rtol=1e-10, atol=1e-10):
                        if np.allclose(y * t, want, rtol=1e-10, atol=1e-10):
                            return (f"rank {r}: the mean of the partial outputs (the sum / {t}): "
                                    f"g-bar sums them, op=\"sum\"")
                        if np.allclose(y.reshape(-1), want.swapaxes(0, 1).reshape(-1), rtol=1e-10, atol=1e-10):
                            return (f"rank {r}: the right numbers in the wrong layout: the (seq/t, batch, d) "
                                    f"result was reshaped to (batch, seq/t, d); swap the axes, .swapaxes(0, 1)")
                        return (f"rank {r}: wrong values (max error {np.abs(y - want).max():.3g}); are the chunks "
                                f"whole tokens, tokens {r * n}:{(r + 1) * n} of the sum?")
                return None

            if not try_case(res, f"t={t}, partial ({b}, {s}, {d})", lambda t=t, prog=prog: launch(prog, t), judge):
                return res.done(verbose)
    return res.done(verbose)


FSDP_SIZES = (5, 4, 6, 3)  # three Linear layers: 24, 30 and 21 parameters (weights and biases)


class _LoggingComm(_CountingComm):
    """Counts the collectives and logs their order beside the layers' calls; work started on
    the communication stream (``comm.start``) is counted too."""

    def __init__(self, comm, log, calls=None):
        super().__init__(comm)
        self.log = log
        if calls is not None:
            self.calls = calls

    def __getattr__(self, name):
        attr = super().__getattr__(name)
        if name in self.COLLECTIVES:
            def logged(*args, **kwargs):
                self.log.append(name)
                return attr(*args, **kwargs)
            return logged
        if name == "start":
            def start(fn, *args):
                return attr(lambda c, *a: fn(_LoggingComm(c, self.log, self.calls), *a), *args)
            return start
        return attr


def _fsdp_layers(rng):
    params, layers = [], []
    for i, (a, b) in enumerate(zip(FSDP_SIZES[:-1], FSDP_SIZES[1:])):
        params.append(rng.standard_normal(a * b + b) * 0.5)

        def layer(flat, x, a=a, b=b):
            return np.tanh(x @ flat[:a * b].reshape(a, b) + flat[a * b:])
        layers.append(layer)
    return params, layers


def fsdp_forward(fn, world_sizes=(1, 2, 3, 4, 5), verbose=True):
    """Check the ZeRO-3 forward ``fn(comm, shards, layers, x)``: one all_gather per layer just
    before it runs, the values, and that no gathered layer outlives its use."""
    res = CheckResult("fsdp_forward")
    rng = np.random.default_rng(12)
    full, layers = _fsdp_layers(rng)
    x = rng.standard_normal((2, FSDP_SIZES[0]))
    want = x
    for w, layer in zip(full, layers):
        want = layer(w, want)
    L = len(layers)
    for p in world_sizes:
        def prog(comm, p=p):
            log, given = [], []

            def watched(i):
                def call(params, h):
                    arr = np.asarray(params)
                    alive = [j for j, ref in given if ref() is not None]
                    log.append(("layer", i, tuple(arr.shape), bool(arr.shape == full[i].shape and np.allclose(
                        arr, full[i], rtol=0, atol=1e-12)), alive, log.count("all_gather")))
                    try:
                        given.append((i, weakref.ref(params)))
                    except TypeError:  # a list or tuple: no weak reference, judged by its values
                        pass
                    if not log[-1][3]:  # wrong parameters: carry on with zeros, the judge names why
                        return np.zeros((np.shape(h)[0], FSDP_SIZES[i + 1]))
                    return layers[i](arr, h)
                return call

            counted = _LoggingComm(comm, log)
            shards = [np.array_split(w, comm.world_size)[comm.rank].copy() for w in full]
            y = fn(counted, shards, [watched(i) for i in range(L)], x.copy())
            gc.collect()
            after = [j for j, ref in given if ref() is not None]
            return y, dict(counted.calls), log, after

        def judge(out, p=p):
            y, calls, log, after = out[0]
            others = {k: v for k, v in calls.items() if k != "all_gather"}
            if "all_reduce" in others:
                return ("called all_reduce: summing zero-padded parameters gives the right numbers, but each "
                        "rank moves 2(p-1)/p of the layer instead of an all_gather's (p-1)/p; FSDP all-gathers "
                        "the shards")
            if "broadcast" in others:
                return ("called broadcast: it sends ONE rank's array to all, but each rank holds only its own "
                        "shard of every layer; all_gather puts the shards together")
            if others:
                return f"called {others}: ZeRO-3's forward needs one all_gather per layer and nothing else"
            layer_calls = [e for e in log if isinstance(e, tuple)]
            if len(layer_calls) != L:
                return f"ran {len(layer_calls)} layer calls, expected {L} (each layer once, in order)"
            for i, (_, j, shape, right, alive, gathered) in enumerate(layer_calls):
                if j != i:
                    return f"layer {j} ran as call {i}: run the layers in order"
                if gathered > i + 2:
                    return (f"{gathered} all_gathers had run before layer {i} did: every layer was gathered up "
                            f"front, so the whole model sits on every rank (ZeRO-1/2's memory, not ZeRO-3's); "
                            f"gather each layer just before it runs (one ahead, as prefetch, is fine)")
                if not right:
                    n = full[i].size
                    mine = np.array_split(np.arange(n), p)[0].size
                    if shape != (n,) and shape and shape[0] <= mine:
                        return (f"layer {i} was given {shape[0]} parameters, this rank's shard only; it needs "
                                f"all {n}: all_gather the shards first")
                    return (f"layer {i} was given parameters of shape {shape} that are not its {n} flat "
                            f"parameters in rank order (all_gather returns them in rank order)")
                if alive:
                    return (f"the parameters gathered for layer {alive[0]} were still alive when layer {i} ran: "
                            f"free them once used (del, or rebind the name); kept, they grow to the whole "
                            f"model on every rank")
            if calls.get("all_gather", 0) != L:
                return f"called all_gather {calls.get('all_gather', 0)} times; one per layer ({L}) is needed"
            if after:
                return (f"the gathered parameters of layer(s) {after} were still alive after the forward (kept "
                        f"for the backward?): ZeRO-3 frees them, and gathers each layer again in the backward")
            for r, (yr, *_rest) in enumerate(out):
                if yr is None:
                    return f"rank {r} returned None: return the last layer's output"
                if np.shape(yr) != want.shape or not np.allclose(yr, want, rtol=1e-10, atol=1e-10):
                    return f"rank {r}: the output is not the layers applied in turn (shape {np.shape(yr)})"
            return None

        if not try_case(res, f"p={p}, {L} layers", lambda p=p, prog=prog: launch(prog, p), judge):
            return res.done(verbose)
    return res.done(verbose)


register("mesh_coordinates", MESH_HINT, mesh_coordinates_solution)
register("sp_reduce_scatter", SP_HINT, sp_reduce_scatter_solution)
register("fsdp_forward", FSDP_HINT, fsdp_forward_solution)

__all__ = ["mesh_coordinates", "sp_reduce_scatter", "fsdp_forward", "mesh_coordinates_solution",
           "sp_reduce_scatter_solution", "fsdp_forward_solution"]
