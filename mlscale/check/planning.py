"""Checker for notebook 14's exercise: the model-state memory of a GPU in a 3D-parallel run.

    def memory_per_gpu(params, tp, pp, dp, zero_stage):   # -> bytes on one GPU
        ...

Mixed-precision Adam keeps 16 bytes a parameter (Rajbhandari et al. 2020, "ZeRO", section
5.1): 2 of fp16 parameters, 2 of fp16 gradients, K = 12 of fp32 optimizer state (master
weights, momentum, variance). Tensor and pipeline parallelism split the parameters, so one
GPU holds ``params / (tp pp)`` of them; ZeRO then shards over the ``dp`` replicas what its
stage says (``mlscale.parallel.zero``):

    stage 0: 16            stage 1: 4 + 12 / dp
    stage 2: 2 + 14 / dp   stage 3: 16 / dp          (bytes per parameter held)

Activations (which depend on the micro-batch and the schedule) are not part of it. The
reference is :func:`mlscale.parallel.zero.zero_memory` on ``params / (tp pp)``; a wrong
answer is compared with the usual mistakes (everything divided by dp at stage 1, tp pp
forgotten, 4 or 12 bytes a parameter, gigabytes returned instead of bytes, ...) and the
verdict names the one it matches.
"""
from __future__ import annotations

import math

from ..parallel.zero import zero_bytes_per_param, zero_memory
from .core import CheckResult, register, try_case

HINT = """\
One GPU holds 1/(tp pp) of the parameters: tensor parallelism splits every layer's
matrices tp ways, pipeline parallelism gives each stage 1/pp of the layers. Data
parallelism copies them: only ZeRO divides by dp, and only what its stage shards:
    per_gpu = params / (tp * pp)
    bytes_per_param = {0: 2 + 2 + 12,            # fp16 params, fp16 grads, fp32 Adam state
                       1: 2 + 2 + 12 / dp,       # the optimizer state sharded
                       2: 2 + (2 + 12) / dp,     # + the gradients
                       3: (2 + 2 + 12) / dp}[zero_stage]   # + the parameters
    return per_gpu * bytes_per_param
Still stuck? from mlscale.check import solution; solution("memory_per_gpu")"""


def memory_per_gpu_solution(params, tp, pp, dp, zero_stage):
    """Bytes of model state (16-bit params and grads, fp32 Adam state) on one GPU."""
    per_gpu = params / (tp * pp)  # tensor and pipeline parallelism split the parameters
    bytes_per_param = {0: 2 + 2 + 12, 1: 2 + 2 + 12 / dp, 2: 2 + (2 + 12) / dp, 3: (2 + 2 + 12) / dp}[zero_stage]
    return per_gpu * bytes_per_param


def reference(params, tp, pp, dp, zero_stage):
    """mlscale's model: ``zero_memory`` (parallel/zero.py) on the GPU's share of the parameters."""
    return zero_memory(params / (tp * pp), dp, zero_stage)


# The usual mistakes, each as the formula it amounts to, and what to tell the learner.
def _per(params, tp, pp):
    return params / (tp * pp)


MISTAKES = [
    ("all of it divided by dp at stage 1",
     lambda P, t, p, d, s: _per(P, t, p) * (16 / d if s in (1, 2, 3) else 16),
     "ZeRO stage 1 shards only the optimizer state (12 B a parameter) over dp: the fp16 params and "
     "grads (2 + 2 B) stay whole on every replica; stage 2 adds the grads, stage 3 the params"),
    ("stage 2 like stage 1",
     lambda P, t, p, d, s: _per(P, t, p) * zero_bytes_per_param(1 if s == 2 else s, d),
     "ZeRO stage 2 shards the gradients too: 2 + (2 + 12) / dp bytes a parameter, not 2 + 2 + 12 / dp"),
    ("stage 3 like stage 2",
     lambda P, t, p, d, s: _per(P, t, p) * zero_bytes_per_param(2 if s == 3 else s, d),
     "ZeRO stage 3 shards the parameters too: (2 + 2 + 12) / dp bytes a parameter"),
    ("tp pp forgotten",
     lambda P, t, p, d, s: zero_memory(P, d, s),
     "each GPU holds only 1/(tp pp) of the parameters (tensor parallelism splits the layers' matrices, "
     "pipeline parallelism the layers): divide params by tp * pp"),
    ("tp forgotten",
     lambda P, t, p, d, s: zero_memory(P / p, d, s),
     "tensor parallelism splits every layer's matrices too: divide params by tp * pp, not by pp alone"),
    ("pp forgotten",
     lambda P, t, p, d, s: zero_memory(P / t, d, s),
     "pipeline parallelism gives each GPU 1/pp of the layers: divide params by tp * pp, not by tp alone"),
    ("dp as model parallelism",
     lambda P, t, p, d, s: zero_memory(P / (t * p * d), 1, 0),
     "data parallelism COPIES the model (every replica holds all of its share): only ZeRO divides by dp, "
     "and only the parts its stage shards"),
    ("4 bytes a parameter",
     lambda P, t, p, d, s: zero_memory(_per(P, t, p), d, s, k=0, param_bytes=2, grad_bytes=2),
     "mixed-precision Adam keeps 16 B a parameter, not 4: 2 (fp16 params) + 2 (fp16 grads) + 12 "
     "(fp32 master weights, momentum, variance: the optimizer state)"),
    ("4 bytes (fp32 params) a parameter",
     lambda P, t, p, d, s: zero_memory(_per(P, t, p), d, s, k=0, param_bytes=4, grad_bytes=0),
     "4 B a parameter is one fp32 copy of the weights; mixed-precision Adam keeps 16 B: 2 (fp16 params) + "
     "2 (fp16 grads) + 12 (fp32 master weights, momentum, variance)"),
    ("12 bytes a parameter",
     lambda P, t, p, d, s: zero_memory(_per(P, t, p), d, s, k=8),
     "the optimizer state is 12 B a parameter (fp32 master weights 4 + momentum 4 + variance 4), not 8: "
     "16 B in all"),
    ("optimizer state alone",
     lambda P, t, p, d, s: zero_memory(_per(P, t, p), d, s, param_bytes=0, grad_bytes=0),
     "you counted the optimizer state (12 B) only: the fp16 parameters and gradients (2 + 2 B) are model "
     "state too"),
    ("fp32 gradients",
     lambda P, t, p, d, s: zero_memory(_per(P, t, p), d, s, grad_bytes=4),
     "mixed precision keeps the gradients in fp16 (2 B a parameter, ZeRO section 5.1), not fp32: 16 B in all"),
]

# (params, tp, pp, dp, zero_stage): Table 1 rows of Narayanan et al. 2021, the ZeRO paper's
# figure 1 (7.5B on 64 GPUs: 120, 31.4, 16.6, 1.9 GB), dp = 1, and sizes that do not divide
CASES = ([(7.5e9, 1, 1, 64, s) for s in (0, 1, 2, 3)]
         + [(39.1e9, 8, 2, 32, s) for s in (0, 1, 2, 3)]
         + [(175e9, 8, 8, 16, 1), (1.7e9, 1, 1, 32, 2), (18.4e9, 8, 1, 1, 3), (76.1e9, 4, 4, 64, 1),
            (1008e9, 8, 64, 6, 2), (1234567, 3, 5, 7, 3)])


def _judge(got, case):
    want = reference(*case)
    if got is None:
        return "your function returned None; return the number of bytes"
    try:
        val = float(got)
    except (TypeError, ValueError):
        return f"your function returned {type(got).__name__}; return the number of bytes (a number)"
    if not math.isfinite(val):
        return f"your function returned {val}; return the number of bytes"
    if math.isclose(val, want, rel_tol=1e-9):
        return None
    for unit, div in (("GB (1e9 bytes)", 1e9), ("GiB (2**30 bytes)", 2 ** 30)):
        if math.isclose(val, want / div, rel_tol=1e-9):
            return f"you returned {unit}: return bytes ({want:.4g}, not {val:.4g})"
    for _, wrong, why in MISTAKES:
        bad = wrong(*case)
        if not math.isclose(bad, want, rel_tol=1e-9) and math.isclose(val, bad, rel_tol=1e-9):
            return f"{why} (expected {want / 1e9:.4g} GB, got {val / 1e9:.4g} GB)"
    return (f"expected {want / 1e9:.4g} GB ({want:.6g} bytes), got {val / 1e9:.4g} GB: 16 B a parameter "
            f"(2 + 2 + 12), params / (tp pp) per GPU, ZeRO dividing by dp what its stage shards")


def memory_per_gpu(fn, verbose=True):
    """Check ``fn(params, tp, pp, dp, zero_stage) -> bytes`` of model state on one GPU."""
    res = CheckResult("memory_per_gpu")
    for case in CASES:
        P, t, p, d, s = case
        name = f"params={P:.4g}, tp={t}, pp={p}, dp={d}, zero_stage={s}"
        if not try_case(res, name, lambda case=case: fn(*case), lambda got, case=case: _judge(got, case)):
            return res.done(verbose)
    return res.done(verbose)


register("memory_per_gpu", HINT, memory_per_gpu_solution)

__all__ = ["memory_per_gpu", "memory_per_gpu_solution", "reference", "MISTAKES", "CASES"]
