// QSGD stochastic quantization (Alistarh et al. 2017) and its dequantization.
// Python wrapper: mlscale/ops/qsgd.py (cupy.RawModule). The host computes the L2 norm
// (kernels/norm.cu) and passes it in. The uniform draw is splitmix64(seed, i), bit for
// bit the one of mlscale/ops/_rng.py, so one seed quantizes identically on CPU and GPU.
// Traffic per element: quantize reads x (4 B) and writes an int8 (1 B); with the norm
// pass, 9 B per fp32 element. Dequantize: 1 B in, 4 B out. Bound: memory (the hash is
// ~10 integer ops per 5 bytes, well under the integer throughput of any GPU).

__device__ __forceinline__ double uniform01(unsigned long long seed, long long i) {
    unsigned long long z = seed + ((unsigned long long)i + 1ull) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z = z ^ (z >> 31);
    return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}

template <typename T>
__device__ void quantize_impl(const T* x, signed char* q, long long n, T nrm, T s,
                              unsigned long long seed) {
    long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        T r = fabs(x[i]) / nrm * s;          // separate ops: no FMA, same rounding as NumPy
        T lo = floor(r);
        if (uniform01(seed, i) < (double)(r - lo)) lo += T(1);
        T lvl = lo < s ? lo : s;
        q[i] = (signed char)(x[i] < T(0) ? -lvl : lvl);
    }
}

template <typename T>
__device__ void dequantize_impl(const signed char* q, T* out, long long n, T scale) {
    long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        out[i] = (T)q[i] * scale;
}

extern "C" __global__ void qsgd_quantize_f32(const float* x, signed char* q, long long n, float nrm,
                                             float s, unsigned long long seed) {
    quantize_impl<float>(x, q, n, nrm, s, seed);
}
extern "C" __global__ void qsgd_quantize_f64(const double* x, signed char* q, long long n,
                                             double nrm, double s, unsigned long long seed) {
    quantize_impl<double>(x, q, n, nrm, s, seed);
}
extern "C" __global__ void qsgd_dequantize_f32(const signed char* q, float* out, long long n,
                                               float scale) {
    dequantize_impl<float>(q, out, n, scale);
}
extern "C" __global__ void qsgd_dequantize_f64(const signed char* q, double* out, long long n,
                                               double scale) {
    dequantize_impl<double>(q, out, n, scale);
}
