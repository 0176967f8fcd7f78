"""What-if: the step time and TFLOP/s per GPU of a 3D-parallel GPT run on a big cluster,
from the real code run on shape-only arrays.

    from mlscale.whatif import predict
    from mlscale.nn import GPTConfig
    cfg = GPTConfig(vocab_size=51200, seq_len=2048, d_model=12288, num_heads=96, num_layers=80)
    p = predict(cfg, "DGX-A100", tp=8, pp=8, dp=24, micro_batch=1, global_batch=2304, num_chunks=2)
    p.tflops_per_gpu, p.step_time, p.breakdown, p.memory_peak

How (one tensor-parallel group simulated, the rest composed):

1. **One layer, run.** On the ``sim`` engine, ``tp`` ranks on the cluster's NetworkModel
   (``Cluster.network()``: NVLink inside a node) each build their pipeline stage of the
   model on a :class:`mlscale.meta.Meta` device with the accelerator's roofline (the
   ``TPBlock`` of ``mlscale/parallel/tp_attention.py``, Megatron's tensor-parallel block,
   ``sequence_parallel`` as asked), and run one layer forward, then (full recomputation)
   forward again and backward, on a micro-batch. The layer's compute time is the Meta
   device's roofline seconds (``xp.costs``), its tensor-parallel communication the rest of
   the rank's virtual clock (the all-reduces, or all-gathers and reduce-scatters, of the
   real program on NVLink). The LM head (vocab-parallel: x W with W (h, V/t), then the
   fused cross-entropy) runs the same way on the last stage, the embedding on the first.
2. **The pipeline.** A stage does ``l / pp`` such layers per micro-batch; with ``v``
   chunks a micro-batch crosses each stage v times, each crossing a point-to-point send
   of ``b s h / t`` 16-bit values (Megatron's scatter/gather optimization: each of the t
   ranks sends its 1/t over its own InfiniBand rail) at the cluster's inter-node alpha
   and beta, on the critical path. :func:`mlscale.parallel.pp_modern.play` times the
   1F1B (``v = 1``) or interleaved schedule (Megatron's order,
   ``interleaved_schedule``) with these per-micro-batch times; every stage is given the
   slowest stage's times (the one with the LM head, or the embedding).
3. **Data parallel.** The gradients of a stage (16-bit, as many as its parameters) are
   all-reduced over the dp replicas after the pipeline has drained (Megatron 2021 did not
   overlap it), hierarchically as NCCL does on a DGX: a reduce-scatter over the dp peers
   inside a node (NVLink), a ring all-reduce of 1/g of it across nodes, each GPU on its
   own rail, an all-gather inside the node (cost model ``mlscale.collectives.cost``, the
   cluster's alphas and betas). With a pipeline the tied embedding's gradient is also
   all-reduced between the first and the last stage.
4. **The optimizer.** Mixed-precision Adam on the stage's parameters, run on the Meta
   device: the 16-bit gradients cast to fp32, the fused Adam kernel on fp32 master
   weights and m, v, the cast back (its roofline time).

5. **ZeRO** (``zero_stage``, Rajbhandari et al. 2020; ``mlscale/parallel/zero.py``),
   over the dp replicas of a stage; units as ``fsdp.py`` cuts them: the embedding, each
   layer, the LM head's copy. Memory (stage 0 of the pipeline, dp rank 0: the larger
   ``np.array_split`` shards) equals ``zero_memory_by_kind(units, dp, 0, stage,
   prefetch=False, overlap=False)``: stage >= 1 the fp32 master weights, m and v (and the
   fp32 gradient copy of the step) are allocated on the Meta device at the shard's size,
   so the tracker measures them, and Adam runs on the shard (its roofline time about 1/dp);
   the 16-bit gradients (stage >= 2: my shard + one unit's full gradients, the one being
   reduce-scattered) and parameters (stage 3: my shard + one unit gathered) are an
   explicit adjustment of the tracker's bytes to that formula, because TPBlock binds
   views into the model's full flat buffers (the device capacity is checked against the
   adjusted peak). Time, nothing overlapped (no prefetch modelled): stage 1 the dp
   all-reduce becomes a reduce-scatter of the gradients and an all-gather of the updated
   16-bit parameters, hierarchical as the all-reduce (ring: the same bytes, the same time,
   ``_dp_collective``); stage 2 reduce-scatters each unit's gradients after its backward
   in EVERY micro-batch (only my shard of the gradients is kept between micro-batches, as
   the memory counts it; with one micro-batch it is stage 1's time) and all-gathers the
   parameters after the step; stage 3 also all-gathers each unit's parameters before its
   forward and again before its backward (the recomputed forward and the backward share
   it) in every micro-batch, and has no final all-gather. These per-micro-batch
   collectives sit inside the pipeline's forward and backward times (so the schedule's
   bubble grows with them) and are counted in ``breakdown["dp_comm"]``.

Step time = pipeline makespan + dp all-reduce + optimizer. Model FLOPs: Narayanan et al.
2021 eq. (3), ``96 B s l h^2 (1 + s/6h + V/(16 l h))`` (recomputation counted, as the
paper counts it); TFLOP/s per GPU = FLOPs / (step time x GPUs).

**Why one layer and not 1,024+ ranks.** Every data-parallel replica does the same work
on other data, every tensor-parallel rank the same work on its shard, every layer the
same work as the next, and every pipeline stage the same layers: the whole cluster's
step is determined by one tensor-parallel group's layer, the schedule and the two
network levels. So this composes one simulated layer per stage (and the head) instead of
simulating every rank: seconds instead of minutes, and the same answer up to what the
symmetry hides (stragglers, contention of many dp rings on one switch, jitter), which a
full simulation on ``mlscale bench sim``'s scale could show and this does not.

**Assumptions** (what is modelled, and what is not):

- The roofline of ``mlscale/meta/hardware.py`` with its efficiencies: matmuls
  ``EFFICIENCY["matmul"]`` = 0.71 of the 312 TFLOP/s fp16 peak (the ONE number
  calibrated against Table 1, all rows at once; the package default 0.75 gives at most
  7.7% error), attention GEMMs 0.6, memory-bound kernels 0.8 of the 2,039 GB/s HBM
  bandwidth. The same efficiency for every GEMM size: smaller GEMMs really run less
  efficiently (wave quantization, tile edges), which this does not see.
- Dropout as Megatron's GPT runs had it (p = 0.1 on the attention probabilities and
  after attention and MLP): ``TPBlock`` has none, so its kernels are charged beside the
  block on the same Meta device (``_dropout``). It matters: the attention dropout reads
  and writes the whole b a s^2 / t matrix; for the 1.7B model (h = 2304, no tensor
  parallelism) it is 11% of the layer's time, and without it the 1.7B row is
  overpredicted by 15% (``predict(..., dropout=False)``), the 1T row by 1%.
- Fused kernels as Megatron 2021 had them (bias-GELU, LayerNorm, scale-mask-softmax,
  the ``@fused`` regions of mlscale.nn); no FlashAttention (2022): the attention matrix
  P (b a s^2 / t) is written and read back, as Megatron then did.
- Full activation recomputation (the paper's runs): each layer's forward runs twice.
- Tensor-parallel communication is not overlapped with compute (Megatron 2021 did not),
  on NVLink at 300 GB/s per direction, 2 us a message (the DGX-A100 preset). Real NCCL
  all-reduces reach about 230 GB/s of bus bandwidth: a small underestimate of TP time.
- No time for the data loader, logging, the loss-scale check or the gradient-norm
  clipping (a read of the gradients; a few ms); no kernel-launch gaps; the
  vocab-parallel embedding's all-reduce and the cross-entropy's three small ones are
  left out (one (b, s, h) all-reduce a micro-batch on stage 0, against 2 l/pp x 3 in
  its layers).
- Memory of a row (``Prediction.memory_peak``): stage 0 (the most micro-batches in
  flight, the embedding), measured by the Meta device's tracker: 16-bit parameters and
  gradients, fp32 master weights and Adam's m and v (16 B a parameter), each layer's
  input kept for every micro-batch in flight (``pp_modern.peak_activations`` of the
  schedule), and one layer's full working set during its recomputation and backward.
  Past the accelerator's memory it raises :class:`mlscale.meta.OutOfMemoryError`.

**How well** (``mlscale bench megatron``, docs/benchmarks.md): every row of Narayanan et
al.'s Table 1 within 3.9% (the 1.7B and 76B rows rated high, 7.5B and 18B low), and
Korthikanti et al. 2022's full-recomputation iteration times (a second source,
``megatron_table.KORTHIKANTI_TABLE5``) within 12.5%, rated slow more as the model grows:
their newer Megatron overlaps the backward's all-reduces with the weight-gradient GEMMs,
which this does not model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..collectives import cost
from ..meta.hardware import get_cluster, get_hardware

# The one calibrated number (against Table 1 of Narayanan et al. 2021, all rows at once,
# by ``compare.calibrate_matmul``: the value with the smallest largest |error|, 3.9%): the
# fraction of the fp16 tensor-core peak that a large GEMM reaches. With the package's
# uncalibrated default, 0.75 (hardware.DEFAULT_EFFICIENCY), the largest error is 7.7%.
EFFICIENCY = {"matmul": 0.71}


@dataclass
class Prediction:
    """A predicted training step. Times in seconds; ``breakdown`` sums to ``step_time``."""
    step_time: float
    model_flops: float
    num_gpus: int
    breakdown: dict
    layer: dict               # one layer, one micro-batch: fwd/bwd, compute/tp seconds
    memory_peak: int          # bytes, stage 0 of the pipeline, one GPU
    memory_by_kind: dict
    config: dict = field(default_factory=dict)
    stage_head: tuple = (0.0, 0.0)  # the slowest stage's embedding / LM head: (fwd, bwd) seconds a micro-batch
    stage_params: int = 0           # parameters of the largest stage (its gradients are all-reduced over dp)

    @property
    def tflops_per_gpu(self):
        return self.model_flops / (self.step_time * self.num_gpus) / 1e12

    def mfu(self, peak_tflops=312.0):
        return self.tflops_per_gpu / peak_tflops

    @property
    def bubble_fraction(self):
        return self.breakdown["pp_bubble"] / self.step_time


def _check(name, v, lo=1):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"predict: {name}={v!r} must be a whole number >= {lo}")
    return int(v)


def _dropout(dev, block, b, s, s_loc, h, phase, keep=None):
    """Charge a layer's dropouts (Megatron's GPT: p = 0.1 on the attention probabilities,
    a torch dropout on P: read P, write P' and a 1-byte mask; backward: read dP' and the
    mask, write dP; and after attention and MLP, fused with the bias and residual add,
    where it adds a 1-byte mask per (b, s, h) element written forward and read back).
    TPBlock has no dropout (nanoGPT's default), so these kernels are charged here, on the
    same Meta device and clock. ``keep``: a list that holds the forward's masks and P'
    (memory, as Korthikanti et al. 2022 count it: 5 a s^2 b bytes instead of 2)."""
    n_p = b * block.attn.local_heads * s * s
    n_h = 2 * b * s_loc * h
    dev.charge("elementwise", 2 * n_p, 5 * n_p, np.float16, f"attention_dropout_{phase}")
    dev.charge("elementwise", n_h, n_h, np.float16, f"hidden_dropout_mask_{phase}")
    if keep is not None:
        keep.append(dev.empty((n_p,), np.uint8))   # the mask
        keep.append(dev.empty((n_p,), np.float16))  # P' (what P V reads, kept for its backward)
        keep.append(dev.empty((n_h,), np.uint8))


def _units(model, head):
    """Parameter counts of a stage's ZeRO units, in order: each layer of ``model`` (the
    embedding, token and position tables, on the first stage; each TPBlock), then the LM
    head's copy (last stage, ``head`` its size; 0 elsewhere)."""
    sizes = [0] * len(model.layers)
    for slot in model.slots:
        sizes[slot.layer] += slot.stop - slot.start
    return sizes + ([int(head)] if head else [])


def _zero_shares(units, dp, stage):
    """Elements of 16-bit params, 16-bit grads and optimizer-state parameters dp rank 0 (the
    largest shard, ``np.array_split`` cuts) holds under ZeRO ``stage``: exactly
    ``zero_memory_by_kind(units, dp, 0, stage, prefetch=False, overlap=False)`` / its bytes."""
    from ..parallel.zero import zero_memory_by_kind

    kb = zero_memory_by_kind(units, dp, 0, stage, itemsize=1, state_per_param=1, prefetch=False, overlap=False)
    return kb["params"], kb["grads"], kb["optimizer"]


def _stage_program(comm, cfg, hw, micro_batch, layers, first, last, sp, recompute, in_flight, dropout=True,
                   zero_stage=0, dp=1):
    """One tensor-parallel rank: build its stage on a Meta device, run one layer (and the
    head), the optimizer; return timings and the memory tracker's peak.

    ZeRO (``zero_stage`` >= 1, over ``dp`` replicas): the optimizer state (fp32 master, m,
    v) and the fp32 gradient copy are ALLOCATED at rank 0's shard size and Adam runs on that
    shard (the tracker measures them, the roofline times 1/dp of the step). The 16-bit
    params (stage 3) and grads (stages 2-3) stay the model's full flat buffers (TPBlock binds
    views into them), and the tracker's bytes of those two kinds are then lowered by an
    explicit adjustment to ``zero_memory_by_kind``'s shares (my shard + one unit gathered:
    no prefetch, no overlap), with the device capacity checked against the adjusted peak."""
    from ..meta import Meta
    from ..nn.embedding import Embedding
    from ..nn.model import Sequential
    from ..nn.optim import Adam
    from ..parallel.tp_attention import TPBlock

    t = comm.world_size
    dev = Meta(hw, comm=comm)
    b, s, h, V = micro_batch, cfg.seq_len, cfg.d_model, cfg.vocab_size
    s_loc = s // t if sp else s
    parts = ([Embedding(V // t, s, h)] if first else []) + [TPBlock(comm, cfg, sequence_parallel=sp)
                                                            for _ in range(layers)]
    cap = dev.memory.capacity
    if zero_stage >= 2 and dp > 1:  # the full 16-bit buffers are built first: the capacity is checked once
        dev.memory.capacity = None  # the adjustment (``cut`` below) is known
    model = Sequential(parts, dtype=np.float16, xp=dev)  # params + grads, 16-bit
    head_w = dev.zeros((h, V // t), np.float16, kind="params") if last else None  # the (tied) LM head's copy
    head_g = dev.zeros((h, V // t), np.float16, kind="grads") if last else None
    nparams = model.params.size + (head_w.size if last else 0)
    units = _units(model, head_w.size if last else 0)
    assert sum(units) == nparams, (units, nparams)
    p_el, g_el, o_el = _zero_shares(units, dp, zero_stage)
    # bytes the tracker over-counts (full 16-bit params / grads where ZeRO keeps shard + one unit)
    cut = 2 * (nparams - p_el) + 2 * (nparams - g_el)

    def check_fits():
        if cap is not None and dev.memory.peak - cut > cap:
            from ..meta import OutOfMemoryError

            raise OutOfMemoryError(f"CUDA out of memory: stage needs {(dev.memory.peak - cut) / 2**30:.2f} GiB with "
                                   f"ZeRO-{zero_stage} over dp={dp}, the {hw.name} has {cap / 2**30:.2f} GiB. Shard "
                                   f"the model (tp/pp/a higher ZeRO stage, more dp), or use smaller micro-batches")

    if cap is not None:
        dev.memory.capacity = cap + cut  # the tracker's own check, against the adjusted bytes from here on
        check_fits()
    master = dev.empty((o_el,), np.float32, kind="optimizer")  # fp32 master weights (rank 0's shard at ZeRO >= 1)
    opt = Adam(master)  # m, v: "optimizer"
    # activations kept for backward under full recomputation: each layer's input, per micro-batch in flight
    kept = dev.empty((max(1, math.ceil(in_flight * layers)), b, s_loc, h), np.float16) if recompute else None
    block = model.layers[1 if first else 0]
    x = dev.zeros((b, s_loc, h), np.float16)
    dy = dev.zeros((b, s_loc, h), np.float16)
    out = {}

    def span(fn):
        t0, c0 = comm.clock, dev.costs.seconds
        r = fn()
        return r, comm.clock - t0, dev.costs.seconds - c0

    live0 = dev.memory.allocated
    keep = []

    def fwd(keep_masks):
        block.forward(x)
        if dropout:
            _dropout(dev, block, b, s, s_loc, h, "forward", keep if keep_masks else None)

    def bwd():
        if recompute:  # full recomputation: forward again in backward (its dropouts too, the masks regenerated)
            keep.clear()
            fwd(True)
        block.backward(dy)
        if dropout:
            _dropout(dev, block, b, s, s_loc, h, "backward")
        if sp:
            block.sync_grads()

    _, tf, cf = span(lambda: fwd(True))
    if not recompute:  # every layer's whole saved state, for each micro-batch in flight (less this one's)
        saved = dev.memory.allocated - live0
        kept = dev.empty((max(0, math.ceil(in_flight * layers) - 1) * saved,), np.uint8)
    # full recomputation: forward again in backward, then the backward (its collectives included)
    _, tb, cb = span(bwd)
    if t == 1:  # no collectives: the clock is the compute (not left to rounding)
        cf, cb = tf, tb
    out["layer"] = {"fwd": tf, "bwd": tb, "fwd_compute": min(cf, tf), "bwd_compute": min(cb, tb)}  # (rounding)
    hf = hb = 0.0
    if last:  # vocab-parallel LM head + fused cross-entropy (Megatron: logits never gathered)
        xs = dev.zeros((b * s, h), np.float16)
        (_, logits), hf, _ = span(lambda: (None, xs @ head_w))
        def head_bwd():
            dev.fused("cross_entropy", [logits], [logits], 6)  # softmax, loss and dlogits in one pass
            head_g[...] += xs.T @ logits
            return logits @ head_w.T
        _, hb, _ = span(head_bwd)
        del logits
    ef = eb = 0.0
    if first:  # the embedding lookup (and its scatter-add backward)
        emb = model.layers[0]
        idx = dev.zeros((b, s), np.int64)
        _, ef, _ = span(lambda: emb.forward(idx))
        _, eb, _ = span(lambda: emb.backward(dev.zeros((b, s, h), np.float16)))
    out["head"] = {"fwd": hf + ef, "bwd": hb + eb}
    # the optimizer step: 16-bit grads to fp32, fused Adam on the master weights, cast back
    def step():  # at ZeRO >= 1 on rank 0's shard only (o_el elements)
        g32 = dev.empty((o_el,), np.float32)
        n = min(o_el, model.grads.size)
        g32[:n] = model.grads[:n]
        opt.step(g32)
        model.params[:n] = master[:n]
    _, _, out["optimizer"] = span(step)
    out["nparams"] = int(nparams)
    out["units"] = units
    at_peak = dict(dev.memory.at_peak)
    if cut:  # params and grads live the whole program: the peak's moment is unchanged, its bytes lowered
        at_peak["params"] -= 2 * (nparams - p_el)
        at_peak["grads"] -= 2 * (nparams - g_el)
        check_fits()
    dev.memory.capacity = cap
    out["memory_peak"] = int(dev.memory.peak - cut)
    out["memory_at_peak"] = at_peak
    del kept
    return out


def _dp_peers(dp, tp, cl):
    """dp peers in a node (Megatron's rank order: tp fastest, then dp): g of them, dp/g nodes."""
    g = max(1, min(dp, cl.gpus_per_node // tp))  # dp peers sit tp ranks apart: gpus_per_node / tp in a node
    while dp % g:
        g -= 1
    return g


def _dp_collective(kind, nbytes, dp, tp, cl):
    """Hierarchical ring ``kind`` ("reduce_scatter" or "all_gather") of ``nbytes`` (the
    full buffer) over dp replicas: a reduce-scatter inside the node (NVLink, g peers), then
    of 1/g of it across the dp/g nodes (InfiniBand, each GPU its own rail); an all-gather
    the other way round. A reduce-scatter plus an all-gather is ``_dp_allreduce`` (ring:
    the same bytes, the same alphas)."""
    if dp == 1:
        return 0.0
    if kind not in ("reduce_scatter", "all_gather"):
        raise ValueError(f"_dp_collective: kind={kind!r}, use 'reduce_scatter' or 'all_gather'")
    g = _dp_peers(dp, tp, cl)
    f = getattr(cost, kind)
    t = f("ring", g, nbytes, cl.intra_latency, 1.0 / cl.intra_bandwidth) if g > 1 else 0.0
    if dp // g > 1:
        t += f("ring", dp // g, nbytes / g, cl.inter_latency, 1.0 / cl.inter_bandwidth)
    return t


def _dp_allreduce(nbytes, dp, tp, pp, cl):
    """Hierarchical ring all-reduce of ``nbytes`` over dp replicas (NCCL on a DGX): g peers
    in a node (Megatron's rank order: tp fastest, then dp), dp/g nodes."""
    if dp == 1:
        return 0.0
    g = _dp_peers(dp, tp, cl)
    ai, bi = cl.intra_latency, 1.0 / cl.intra_bandwidth
    ae, be = cl.inter_latency, 1.0 / cl.inter_bandwidth
    t = 0.0
    if g > 1:
        t += cost.reduce_scatter("ring", g, nbytes, ai, bi) + cost.all_gather("ring", g, nbytes, ai, bi)
    if dp // g > 1:
        t += cost.all_reduce("ring", dp // g, nbytes / g, ae, be)
    return t


def predict(model_cfg, cluster="DGX-A100", tp=1, pp=1, dp=1, micro_batch=1, global_batch=None,
            schedule="interleaved", num_chunks=None, recompute="full", sequence_parallel=False,
            hardware=None, efficiency=None, dropout=True, zero_stage=0):
    """Predict one training step of ``model_cfg`` (a GPTConfig) on ``tp * pp * dp`` GPUs of
    ``cluster`` (a preset name or Cluster). See the module docstring for the model.

    schedule: "1f1b" or "interleaved" (with ``num_chunks`` model chunks per stage; default
    2 where a stage's layers divide by 2, else 1). recompute: "full" (Megatron 2021) or
    None. efficiency: op-class efficiencies over ``EFFICIENCY`` (e.g. ``{"matmul": 0.8}``).
    dropout: charge Megatron's dropout kernels (attention probabilities and hidden, p = 0.1).
    zero_stage: 0 (plain data parallel, Megatron 2021), or ZeRO stage 1, 2 or 3 over the dp
    replicas (Rajbhandari et al. 2020; see "ZeRO" in the module docstring).
    Returns a :class:`Prediction`; raises OutOfMemoryError if stage 0 does not fit."""
    from ..comm.launch import launch
    from ..nn.transformer import GPTConfig
    from ..parallel.pp_modern import interleaved_schedule, peak_activations, play

    if not isinstance(model_cfg, GPTConfig):
        raise TypeError(f"predict: model_cfg must be a GPTConfig, got {type(model_cfg).__name__}")
    tp, pp, dp, micro_batch = (_check(k, v) for k, v in
                               (("tp", tp), ("pp", pp), ("dp", dp), ("micro_batch", micro_batch)))
    cl = get_cluster(cluster)
    if tp > cl.gpus_per_node:
        raise ValueError(f"predict: tp={tp} is more than the {cl.gpus_per_node} GPUs of a {cl.name} node; "
                         f"tensor parallelism belongs on NVLink (Narayanan et al. 2021, takeaway 1): use tp <= "
                         f"{cl.gpus_per_node} and more pp")
    L = model_cfg.num_layers
    if L % pp:
        raise ValueError(f"predict: num_layers={L} does not split into pp={pp} equal stages; use a pp that "
                         f"divides {L}")
    if model_cfg.num_heads % tp or model_cfg.vocab_size % tp:
        raise ValueError(f"predict: num_heads={model_cfg.num_heads} and vocab_size={model_cfg.vocab_size} must "
                         f"divide by tp={tp}")
    if sequence_parallel and model_cfg.seq_len % tp:
        raise ValueError(f"predict: sequence_parallel needs seq_len={model_cfg.seq_len} divisible by tp={tp}")
    global_batch = micro_batch * dp if global_batch is None else _check("global_batch", global_batch)
    if global_batch % (micro_batch * dp):
        raise ValueError(f"predict: global_batch={global_batch} is not a multiple of micro_batch x dp = "
                         f"{micro_batch} x {dp}; use a batch of k x {micro_batch * dp}")
    m = global_batch // (micro_batch * dp)
    if schedule not in ("1f1b", "interleaved"):
        raise ValueError(f"predict: schedule={schedule!r}; use '1f1b' or 'interleaved'")
    if isinstance(zero_stage, bool) or zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"predict: zero_stage={zero_stage!r}; use 0 (plain data parallel), 1 (optimizer state "
                         f"sharded over dp), 2 (+ gradients) or 3 (+ parameters)")
    zero_stage = int(zero_stage)
    if recompute not in ("full", None):
        raise ValueError(f"predict: recompute={recompute!r}; use 'full' (Megatron 2021) or None")
    per_stage = L // pp
    v = 1
    if schedule == "interleaved" and pp > 1:
        v = num_chunks if num_chunks is not None else (2 if per_stage % 2 == 0 else 1)
        if per_stage % v:
            raise ValueError(f"predict: num_chunks={v} does not divide the {per_stage} layers of a stage")
    hw = get_hardware(hardware or cl.gpu).with_efficiency(**{**EFFICIENCY, **(efficiency or {})})
    ops = interleaved_schedule(pp, m, v)
    in_flight = peak_activations(ops, v)[0]
    cfg1 = GPTConfig(**{**model_cfg.__dict__, "num_layers": 1, "recompute": None})

    def stage(first, last):
        res = launch(_stage_program, tp, args=(cfg1, hw, micro_batch, per_stage, first, last,
                                               bool(sequence_parallel) and tp > 1, recompute == "full",
                                               in_flight, bool(dropout), zero_stage, dp), network=cl.network())
        return res[0]

    s0 = stage(True, pp == 1)
    sl = s0 if pp == 1 else stage(False, True)
    lay = s0["layer"]
    tp_f, tp_b = lay["fwd"] - lay["fwd_compute"], lay["bwd"] - lay["bwd_compute"]
    head = max(s0["head"]["fwd"] + s0["head"]["bwd"], sl["head"]["fwd"] + sl["head"]["bwd"])
    heavy = s0 if s0["head"]["fwd"] + s0["head"]["bwd"] >= sl["head"]["fwd"] + sl["head"]["bwd"] else sl
    # p2p between stages: b s h / t 16-bit values per crossing, on each rank's own rail
    b, s, h = micro_batch, model_cfg.seq_len, model_cfg.d_model
    p2p = (cl.inter_latency + 2 * b * s * h / tp / cl.inter_bandwidth) if pp > 1 else 0.0
    # ZeRO inside the pipeline, per micro-batch, not overlapped (no prefetch): stage 3 all-gathers
    # each unit's 16-bit params before its forward and again before its backward (the recomputed
    # forward and the backward share that gather); stages 2-3 reduce-scatter each unit's 16-bit
    # gradients after its backward (only my shard of them is kept between micro-batches)
    heavy_units = heavy["units"]
    zf = zb = 0.0
    if zero_stage == 3:
        zf = sum(_dp_collective("all_gather", 2 * n, dp, tp, cl) for n in heavy_units)
        zb = zf
    if zero_stage >= 2:
        zb += sum(_dp_collective("reduce_scatter", 2 * n, dp, tp, cl) for n in heavy_units)
    t_f = per_stage * lay["fwd"] + heavy["head"]["fwd"] + v * p2p + zf
    t_b = per_stage * lay["bwd"] + heavy["head"]["bwd"] + v * p2p + zb
    slots = play(ops, v, t_f, t_b) if pp > 1 else None
    makespan = max(x.end for x in slots) if slots else m * (t_f + t_b)
    busy = m * (t_f + t_b)
    nbytes = 2 * max(s0["nparams"], sl["nparams"])
    if zero_stage == 0:
        dp_t = _dp_allreduce(nbytes, dp, tp, pp, cl)
    elif zero_stage == 1:  # reduce-scatter the gradients, Adam on my shard, all-gather the params
        dp_t = _dp_collective("reduce_scatter", nbytes, dp, tp, cl) + _dp_collective("all_gather", nbytes, dp, tp, cl)
    elif zero_stage == 2:  # the gradients were reduce-scattered in the pipeline; all-gather the params
        dp_t = _dp_collective("all_gather", nbytes, dp, tp, cl)
    else:  # stage 3: the params stay sharded (gathered in the next step's pipeline)
        dp_t = 0.0
    if pp > 1:  # the tied word embedding: its gradient summed between the first and the last stage
        dp_t += cost.all_reduce("ring", 2, 2 * h * model_cfg.vocab_size // tp, cl.inter_latency,
                                1.0 / cl.inter_bandwidth)
    opt_t = max(s0["optimizer"], sl["optimizer"])
    compute = m * (per_stage * (lay["fwd_compute"] + lay["bwd_compute"]) + head)
    breakdown = {"compute": compute, "tp_comm": m * per_stage * (tp_f + tp_b), "pp_p2p": m * 2 * v * p2p,
                 "pp_bubble": makespan - busy, "dp_comm": dp_t + m * (zf + zb), "optimizer": opt_t}
    step = makespan + dp_t + opt_t
    from .megatron_table import model_flops_eq3

    flops = model_flops_eq3(global_batch, s, L, h, model_cfg.vocab_size)
    if recompute is None:  # 72 instead of 96: no recomputed forward
        flops = flops * 72 / 96
    return Prediction(step, flops, tp * pp * dp, breakdown, {**lay, "tp_fwd": tp_f, "tp_bwd": tp_b},
                      s0["memory_peak"], s0["memory_at_peak"],
                      {"tp": tp, "pp": pp, "dp": dp, "micro_batch": micro_batch, "global_batch": global_batch,
                       "num_microbatches": m, "num_chunks": v, "schedule": schedule if pp > 1 else "-",
                       "recompute": recompute, "zero_stage": zero_stage, "sequence_parallel": bool(sequence_parallel), "dropout": bool(dropout),
                       "hardware": hw.name, "cluster": cl.name},
                      (heavy["head"]["fwd"], heavy["head"]["bwd"]), max(s0["nparams"], sl["nparams"]))


__all__ = ["predict", "Prediction", "EFFICIENCY"]
