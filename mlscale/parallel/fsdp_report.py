"""ZeRO stages side by side, measured on sim (for notebook 12 and the tests): memory per
rank by kind, bytes per step from the trace, the step time with and without prefetch,
and a timeline of one FSDP step (``mlscale.viz.timeline``).

    rows = zero_stages(lambda: nn.GPT(cfg, seed=0, dtype=np.float64), batch, world_size=4)
    t = prefetch_step_times(make_model, batch, 4, NetworkModel(alpha=1e-5, beta=1e-9))
    plot_fsdp_timeline(make_model, batch, 4, NetworkModel(...))
"""
from __future__ import annotations

import numpy as np

from .fsdp import FSDP
from .zero import wire_bytes, zero_memory, zero_memory_by_kind


def _one_step(comm, make_model, batch, stage, lr, kw):
    from ..data import split_batch
    from ..nn.optim import Adam

    model = make_model()
    fsdp = FSDP(comm, model, lambda s: Adam(s, lr=lr), stage=stage, **kw)
    x, y = batch
    t0 = comm.clock if comm.backend == "sim" else None
    loss = float(fsdp.loss_and_grad(*split_batch((np.asarray(x), np.asarray(y)), comm.rank, comm.world_size)))
    fsdp.step()
    t1 = comm.clock if comm.backend == "sim" else None
    return {"peak": dict(fsdp.ledger.peak), "peak_total": fsdp.ledger.peak_total,
            "units": [u.numel for u in fsdp.units], "loss": loss,
            "time": None if t0 is None else t1 - t0, "itemsize": fsdp.itemsize}


def run_step(make_model, batch, world_size, stage=3, network=None, lr=1e-3, **kw):
    """One FSDP step of ``make_model()`` on ``batch`` over ``world_size`` simulated ranks;
    returns ``(per-rank results, trace)`` (``kw`` goes to FSDP: prefetch, overlap, units)."""
    from ..comm.launch import launch

    res = launch(_one_step, world_size, args=(make_model, batch, stage, lr, kw), network=network)
    return list(res), res.trace


def zero_stages(make_model, batch, world_size, stages=(0, 1, 2, 3), network=None, lr=1e-3):
    """For each stage: ``{"stage", "params", "grads", "optimizer"`` (measured peak bytes of
    rank 0; ``"peak_total"`` the peak of their sum), ``"model"`` (its ZeRO-model
    prediction, ``zero_memory_by_kind``), ``"paper"``
    (``zero_memory`` of zero.py with this dtype: the unit buffers in flight left out),
    ``"wire"`` (bytes all ranks sent in the step, from the trace), ``"wire_formula"``,
    ``"wire_vs_dp"``}."""
    rows, dp_wire = [], None
    for stage in stages:
        res, trace = run_step(make_model, batch, world_size, stage, network, lr)
        r0, nb = res[0], res[0]["itemsize"]
        n = sum(r0["units"])
        wire = trace.bytes_sent()
        dp_wire = wire if stage == 0 else dp_wire
        rows.append({"stage": stage, **r0["peak"], "peak_total": r0["peak_total"],
                     "model": zero_memory_by_kind(r0["units"], world_size, 0, stage, nb),
                     "paper": zero_memory(n, world_size, stage, k=2 * nb, param_bytes=nb, grad_bytes=nb),
                     "wire": wire, "wire_formula": wire_bytes(r0["units"], world_size, stage, nb),
                     "wire_vs_dp": None if not dp_wire else wire / dp_wire})
    return rows


def prefetch_step_times(make_model, batch, world_size, network, stage=3, lr=1e-3):
    """Virtual seconds of one step (slowest rank) ``{"prefetch": t, "no prefetch": t}``:
    with prefetch the next unit's all-gather (and the reduce-scatters) run on the
    communication stream while this unit computes."""
    out = {}
    for name, kw in {"prefetch": dict(prefetch=True, overlap=True),
                     "no prefetch": dict(prefetch=False, overlap=False)}.items():
        res, _ = run_step(make_model, batch, world_size, stage, network, lr, **kw)
        out[name] = max(r["time"] for r in res)
    return out


def plot_fsdp_timeline(make_model, batch, world_size, network, stage=3, axes=None, lr=1e-3):
    """Two timelines of one FSDP step on the same time axis: without and with prefetch
    (``mlscale.viz.timeline``: messages coloured by collective, compute spans below).
    Returns the axes."""
    import matplotlib.pyplot as plt

    from ..viz.trace_plots import timeline

    if axes is None:
        _, axes = plt.subplots(2, 1, figsize=(9, 1.0 * world_size + 3), sharex=True)
    ends = []
    for ax, (name, kw) in zip(axes, {"no prefetch": dict(prefetch=False, overlap=False),
                                     "prefetch": dict(prefetch=True, overlap=True)}.items()):
        res, trace = run_step(make_model, batch, world_size, stage, network, lr, **kw)
        t = max(r["time"] for r in res)
        timeline(trace, ax=ax, unit="ms", title=f"ZeRO-{stage}, {name}: step {t * 1e3:.3f} ms (virtual)")
        ends.append(trace.end)
    for ax in axes:  # one time axis for both, the longer run's
        ax.set_xlim(0, max(ends) * 1e3 * 1.01)
    return axes


__all__ = ["run_step", "zero_stages", "prefetch_step_times", "plot_fsdp_timeline"]
