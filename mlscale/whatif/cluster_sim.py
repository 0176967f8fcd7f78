"""Every rank of a frontier-scale training step, simulated: 1,024+ ranks on the sim engine.

    from mlscale.whatif import simulate_step
    run = simulate_step(cfg175b, "DGX-A100", tp=8, pp=16, dp=8, micro_batch=1, global_batch=1536)
    run.step_time, run.prediction.step_time, run.events, run.wall_seconds

:func:`predict` composes one simulated layer per stage by symmetry. This runs the step on
EVERY rank instead, so that what the symmetry hides can be looked at rank by rank (a
straggler with ``speeds=``, a slow link with ``links=``, the clocks of all ranks):

1. **The layer costs** come from :func:`predict`: one layer of the real ``TPBlock`` run on
   shape-only arrays (``mlscale.meta``) on the A100 roofline, with its tensor-parallel
   collectives on the cluster's simulated NVLink. A stage's forward (backward) of one
   micro-batch is charged to each rank as ONE ``comm.compute`` of that time (its layers, the
   embedding or LM head, and the tensor-parallel all-reduces inside them): recorded once,
   replayed on every rank. The tensor-parallel messages are therefore not sent again
   rank by rank (everything between layers is); a tp group moves in lockstep at the pace
   of its slowest member, as its per-layer all-reduces force it to (each rank's compute
   is scaled by its speed over the group's slowest: a straggler slows its whole group).
2. **The pipeline**, on every rank: the interleaved 1F1B (or 1F1B) schedule of
   ``pp_modern.interleaved_schedule`` played on the pp sub-communicator by
   ``pp_modern.run_on_sim``: each F and B waits for the message of the stage before (after)
   it, a real point-to-point message of ``b s h / t`` 16-bit values (shape-only: sizes,
   no data) on the cluster's InfiniBand links, sent on the communication stream.
3. **Data parallel**: after the pipeline drains, the stage's 16-bit gradients (a shape-only
   array of the stage's parameter count) are all-reduced over the dp sub-communicator with
   mlscale's ring, message by message (flat, not NCCL's hierarchy); the first and last stage
   all-reduce the tied word embedding's gradient; then the optimizer's time.

Where it differs from :func:`predict` by construction: (a) the point-to-point sends here
are non-blocking (a stage sends and goes on, as Megatron-LM does with
``overlap_p2p_comm``), so their time hides wherever the receiver is still busy, while
``predict`` charges them on the critical path, as Megatron 2021's blocking exchanges had
them; (b) the data-parallel all-reduce here is mlscale's flat ring, while ``predict``
models NCCL's two-level one (inside the node, then across): slower here when a dp group
spans nodes with several peers in each. Where the dp group sits in one node (or has one
peer a node), the simulated step lies between ``predict``'s less its ``pp_p2p`` term and
``predict``'s (tested); GPT-3 175B at (8, 16, 8): 29.57 s against 29.59 s.

Ranks: Megatron's order, tp fastest (one node), then dp, then pp: rank = (pp_i dp + dp_i)
tp + tp_i, so the cluster preset's nodes (rank // gpus_per_node) hold one tp group each
when tp = 8. The simulator's step time is the largest rank clock; ``events`` counts the
messages and compute spans it simulated (``events_per_second`` = events / wall time).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


@dataclass
class ClusterRun:
    step_time: float            # virtual seconds: the slowest rank's clock
    clocks: list                # every rank's clock at the end of the step
    prediction: object          # the Prediction whose layer costs were replayed
    events: int                 # messages + compute spans simulated
    wall_seconds: float         # host seconds the simulation took
    num_ranks: int

    @property
    def events_per_second(self):
        return self.events / self.wall_seconds if self.wall_seconds > 0 else float("inf")

    @property
    def tflops_per_gpu(self):
        return self.prediction.model_flops / (self.step_time * self.num_ranks) / 1e12


def _rank_program(comm, tp, pp, dp, ops, v, t_f, t_b, p2p_bytes, grad_elems, emb_elems, opt_time, lockstep):
    from ..meta import Meta
    from ..parallel.pp_modern import run_on_sim

    r = comm.rank
    f = lockstep[r]  # my tp group runs at its slowest member's pace (its all-reduces wait for it)
    t_f, t_b, opt_time = t_f * f, t_b * f, opt_time * f
    tp_i, dp_i, pp_i = r % tp, (r // tp) % dp, r // (tp * dp)
    pp_comm = comm.split(dp_i * tp + tp_i, key=pp_i)  # my pipeline: same (dp, tp), every pp stage
    dp_comm = comm.split(pp_i * tp + tp_i, key=dp_i)  # my data-parallel peers: same (pp, tp)
    ends = comm.split(dp_i * tp + tp_i if pp > 1 and pp_i in (0, pp - 1) else None, key=pp_i)  # tied embedding
    xp = Meta(comm=comm)  # shape-only messages: sizes on the wire, no data in memory (no hardware: no time)
    if pp > 1:
        run_on_sim(pp_comm, ops, v, t_f, t_b, nbytes=p2p_bytes, xp=xp)
        spans = len(ops[pp_i])
    else:
        comm.compute(seconds=len(ops[0]) // 2 * (t_f + t_b), label="F+B")
        spans = 1
    if dp > 1:
        dp_comm.all_reduce(xp.zeros(grad_elems, np.float16), algorithm="ring")
    if ends is not None:  # the word embedding is tied: its gradient summed by the first and last stage
        ends.all_reduce(xp.zeros(emb_elems, np.float16), algorithm="ring")
    comm.compute(seconds=opt_time, label="optimizer")
    sent = pp_comm.messages_sent + dp_comm.messages_sent + comm.messages_sent + (ends.messages_sent if ends else 0)
    return comm.clock, sent + spans + 1  # the events this rank made: messages sent, compute spans


def simulate_step(model_cfg, cluster="DGX-A100", tp=1, pp=1, dp=1, micro_batch=1, global_batch=None,
                  schedule="interleaved", num_chunks=None, network=None, **predict_kwargs):
    """Simulate one training step on every one of the ``tp * pp * dp`` ranks (see the module
    docstring). ``network``: a NetworkModel to use instead of the cluster preset's, e.g.
    ``get_cluster("DGX-A100").network(speeds={5: 0.8})`` for a straggler on rank 5.
    Other arguments as :func:`mlscale.whatif.predict`, whose layer costs are replayed."""
    from ..comm.sim import Simulator
    from ..meta.hardware import get_cluster
    from ..parallel.pp_modern import interleaved_schedule
    from .predict import predict

    cl = get_cluster(cluster)
    pred = predict(model_cfg, cl, tp=tp, pp=pp, dp=dp, micro_batch=micro_batch, global_batch=global_batch,
                   schedule=schedule, num_chunks=num_chunks, **predict_kwargs)
    c = pred.config
    m, v = c["num_microbatches"], c["num_chunks"]
    lay = pred.layer
    per_stage = model_cfg.num_layers // pp
    # a stage's F and B of one micro-batch (all its chunks), as predict composes them, without
    # the point-to-point time: here the messages themselves take it
    head_f, head_b = pred.stage_head
    t_f = per_stage * lay["fwd"] + head_f
    t_b = per_stage * lay["bwd"] + head_b
    p2p_bytes = 2 * micro_batch * model_cfg.seq_len * model_cfg.d_model // tp
    ops = interleaved_schedule(pp, m, v)
    grad_elems = pred.stage_params
    n = tp * pp * dp
    net = network if network is not None else cl.network()
    # the tensor-parallel collectives are inside the replayed layer time, not sent rank by
    # rank: a tp group moves in lockstep at its slowest member's speed, as its per-layer
    # all-reduces make it; so each rank's compute is scaled by speed / the group's slowest
    speed = [net.speed(q) for q in range(n)]
    lockstep = [speed[q] / min(speed[q - q % tp: q - q % tp + tp]) for q in range(n)]
    sim = Simulator(n, net, record_trace=False)
    t0 = time.perf_counter()
    emb_elems = model_cfg.d_model * model_cfg.vocab_size // tp
    out = sim.run(_rank_program, (tp, pp, dp, ops, v, t_f, t_b, p2p_bytes, grad_elems, emb_elems,
                                  pred.breakdown["optimizer"], lockstep))
    wall = time.perf_counter() - t0
    clocks = [o[0] for o in out]
    return ClusterRun(max(clocks), clocks, pred, sum(o[1] for o in out), wall, n)


__all__ = ["simulate_step", "ClusterRun"]
