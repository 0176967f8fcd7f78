"""mlscale.ops: the gradient-critical kernels, each in four versions.

Every op lives in one module ``mlscale/ops/<op>.py`` with (1) ``<op>_reference`` in
NumPy, the specification; (2) a numba CPU kernel (``@njit(parallel=True)``); (3) a
numba-CUDA kernel (``@cuda.jit``, at module top level, so numba's CUDA simulator runs it
without a GPU); (4) a CuPy kernel whose CUDA C source is ``kernels/<op>.cu``, compiled
by NVRTC through ``cupy.RawModule`` (cupy is imported inside functions only). The public
function dispatches with ``impl=``:

    "auto"       numpy arrays -> "numba"; cupy arrays -> "cupy"; numba device arrays -> "cuda"
    "reference"  NumPy (any strides)
    "numba"      numba CPU kernel (numpy, C-contiguous)
    "cuda"       numba-CUDA kernel; numpy inputs are copied to the device and back
    "cupy"       kernels/<op>.cu via CuPy; numpy inputs are copied to the device and back

In-place ops (reduce_chunk, sgd_step, adam_step, clipping, the residuals of the
compressors) need C-contiguous arrays for every impl but "reference": a strided view is
refused with a ValueError rather than updated in a copy. Mixed array kinds, mismatched
shapes or dtypes and unknown impls raise errors that name the argument and the fix.

======================= =============================================== ========== ==========
op                      computes                                        B/elem     bound
                                                                        (fp32)
======================= =============================================== ========== ==========
reduce_chunk            dst = (dst + src) * scale, in place (ring step) 12         memory
weighted_sum            sum_k w[k] xs[k] (FedAvg, averaging, gossip)    4(k+1)     memory
sgd_step                torch SGD: momentum, weight decay, Nesterov     12 / 20    memory
adam_step               torch Adam / AdamW, bias-corrected              28         memory
norm, global_norm       L2 norm, float64 accumulation                   4          memory [1]
clip_by_global_norm     scale by max_norm / (norm + 1e-6) if < 1        4 (+8)     memory
sum_v0 .. sum_v6        Harris's reduction ladder (reduce_ladder.py)    4          memory [2]
qsgd_quantize           (norm, int8 sign*level), unbiased (QSGD)        9          memory [1]
qsgd_dequantize         norm * q / levels                               5          memory
sign_compress           (packed sign bits, mean |c|), error feedback    ~20        memory
sign_decompress         +/- scale per bit                               4.125      memory
topk_compress           (int32 idx, values) of the k largest |x + r|    >= 16      select [3]
topk_decompress         dense scatter (or accumulate into out)          4 + 8k/n   memory
coordinate_median       per-coordinate median of k clients              4(k+1)/k   compute [4]
trimmed_mean            per-coordinate mean without b low, b high       4(k+1)/k   compute [4]
======================= =============================================== ========== ==========

B/elem counts each array read or written once per element (12/20: SGD without/with
momentum; 4(k+1)/k: per client value). On a GPU every one of these is memory-bound. On
2 CPU cores without fast-math: [1] the float64 reduction (norm) and the hash (QSGD) are
not vectorized and run below the memory bound; [2] v0-v2 are held back by divergence,
bank conflicts and barriers; [3] numba's selection is one serial partition + scan;
[4] the sort costs O(k^2) compares per coordinate. Measured: ``mlscale bench kernels``.

Bytes on the wire (what a compressor saves; n elements, fp32 input):

============================  ===========================  =====================================
compressor                    wire bytes                   vs dense 4n
============================  ===========================  =====================================
qsgd_quantize, levels <= 127  n + 4 (int8 levels, norm)    4x less (paper's Elias coding: more)
sign_compress                 ceil(n/8) + 4                32x less
topk_compress                 8k (int32 index + value)     n / (2k) x less
============================  ===========================  =====================================

Signatures (compression and robust aggregation)::

    norm, q = qsgd_quantize(x, levels, seed=None, impl="auto")   # seed: int | Generator | None
    x_hat = qsgd_dequantize(norm, q, levels, out=None, dtype=np.float32, impl="auto")
    packed, scale = sign_compress(x, residual, impl="auto")       # residual updated in place
    x_hat = sign_decompress(packed, scale, shape, out=None, dtype=np.float32, impl="auto")
    idx, values = topk_compress(x, k, residual, impl="auto")      # residual updated in place
    dense = topk_decompress(idx, values, shape, out=None, accumulate=False, impl="auto")
    med = coordinate_median(xs, out=None, impl="auto")            # xs: (k, ...) array or list
    tm = trimmed_mean(xs, trim, out=None, impl="auto")            # trim: int b or fraction

Throughput of each op against the machine's memory bandwidth: ``mlscale bench kernels``
(docs/benchmarks.md). Sources: kernels/README.md.
"""
from ._common import BLOCK, IMPLS, kernel_path, kernel_source  # noqa: F401
from .adam_step import adam_step, adam_step_reference  # noqa: F401
from .norm import (  # noqa: F401
    clip_by_global_norm,
    global_norm,
    global_norm_reference,
    norm,
    norm_reference,
)
from .qsgd import (  # noqa: F401
    qsgd_dequantize,
    qsgd_dequantize_reference,
    qsgd_quantize,
    qsgd_quantize_reference,
)
from .reduce_chunk import reduce_chunk, reduce_chunk_reference  # noqa: F401
from .reduce_ladder import (  # noqa: F401
    sum_cupy,
    sum_v0,
    sum_v1,
    sum_v2,
    sum_v3,
    sum_v4,
    sum_v5,
    sum_v6,
)
from .robust import (  # noqa: F401
    coordinate_median,
    coordinate_median_reference,
    trimmed_mean,
    trimmed_mean_reference,
)
from .sgd_step import sgd_step, sgd_step_reference  # noqa: F401
from .sign_compress import (  # noqa: F401
    sign_compress,
    sign_compress_reference,
    sign_decompress,
    sign_decompress_reference,
)
from .topk_compress import (  # noqa: F401
    topk_compress,
    topk_compress_reference,
    topk_decompress,
    topk_decompress_reference,
)
from .weighted_sum import weighted_sum, weighted_sum_reference  # noqa: F401

__all__ = [
    "reduce_chunk", "weighted_sum", "sgd_step", "adam_step", "norm", "global_norm",
    "clip_by_global_norm", "qsgd_quantize", "qsgd_dequantize", "sign_compress",
    "sign_decompress", "topk_compress", "topk_decompress", "coordinate_median",
    "trimmed_mean", "sum_v0", "sum_v1", "sum_v2", "sum_v3", "sum_v4", "sum_v5", "sum_v6",
    "sum_cupy",
    # the NumPy specifications, and the .cu loader
    "reduce_chunk_reference", "weighted_sum_reference", "sgd_step_reference",
    "adam_step_reference", "norm_reference", "global_norm_reference",
    "qsgd_quantize_reference", "qsgd_dequantize_reference", "sign_compress_reference",
    "sign_decompress_reference", "topk_compress_reference", "topk_decompress_reference",
    "coordinate_median_reference", "trimmed_mean_reference", "kernel_path", "kernel_source",
    "BLOCK", "IMPLS",
]
