// 1-bit sign compression with error feedback (Seide et al. 2014).
// Python wrapper: mlscale/ops/sign_compress.py (cupy.RawModule).
// abs_sum: one partial sum of |x + r| per block (double); the host divides by n -> scale.
// sign_pack: one thread per output byte: 8 consecutive elements, first one in the most
// significant bit (np.packbits order); r = c -/+ scale (error feedback), in place.
// sign_unpack: +/-scale per bit.
// Traffic per element: abs_sum reads x, r (8 B fp32); sign_pack reads x, r, writes r and
// 1/8 B (~12 B): ~20 B per element in all. Bound: memory. (A warp __ballot_sync would
// gather 32 signs per instruction with fully coalesced loads; one thread per byte keeps
// it the twin of the numba-CUDA kernel that the simulator can test.)

__device__ __forceinline__ double warp_sum(double v) {
    for (int offset = 16; offset > 0; offset >>= 1)
        v += __shfl_down_sync(0xffffffffu, v, offset);
    return v;
}

template <typename T>
__device__ void abs_sum_impl(const T* x, const T* r, double* partials, long long n) {
    __shared__ double warp_sums[32];
    double acc = 0.0;
    long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        acc += (double)fabs(x[i] + r[i]);
    unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    acc = warp_sum(acc);
    if (lane == 0) warp_sums[warp] = acc;
    __syncthreads();
    if (warp == 0) {
        acc = (threadIdx.x < blockDim.x / 32) ? warp_sums[lane] : 0.0;
        acc = warp_sum(acc);
        if (lane == 0) partials[blockIdx.x] = acc;
    }
}

template <typename T>
__device__ void sign_pack_impl(const T* x, T* r, T scale, unsigned char* packed, long long n) {
    long long nbytes = (n + 7) / 8;
    long long stride = (long long)blockDim.x * gridDim.x;
    for (long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x; j < nbytes; j += stride) {
        unsigned byte = 0;
        for (int b = 0; b < 8; ++b) {
            long long i = 8 * j + b;
            if (i < n) {
                T c = x[i] + r[i];
                if (c >= T(0)) { byte |= 128u >> b; r[i] = c - scale; }
                else           { r[i] = c + scale; }
            }
        }
        packed[j] = (unsigned char)byte;
    }
}

template <typename T>
__device__ void sign_unpack_impl(const unsigned char* packed, T scale, T* out, long long n) {
    long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        out[i] = ((packed[i / 8] >> (7 - i % 8)) & 1) ? scale : -scale;
}

extern "C" __global__ void abs_sum_f32(const float* x, const float* r, double* partials, long long n) {
    abs_sum_impl<float>(x, r, partials, n);
}
extern "C" __global__ void abs_sum_f64(const double* x, const double* r, double* partials,
                                       long long n) {
    abs_sum_impl<double>(x, r, partials, n);
}
extern "C" __global__ void sign_pack_f32(const float* x, float* r, float scale,
                                         unsigned char* packed, long long n) {
    sign_pack_impl<float>(x, r, scale, packed, n);
}
extern "C" __global__ void sign_pack_f64(const double* x, double* r, double scale,
                                         unsigned char* packed, long long n) {
    sign_pack_impl<double>(x, r, scale, packed, n);
}
extern "C" __global__ void sign_unpack_f32(const unsigned char* packed, float scale, float* out,
                                           long long n) {
    sign_unpack_impl<float>(packed, scale, out, n);
}
extern "C" __global__ void sign_unpack_f64(const unsigned char* packed, double scale, double* out,
                                           long long n) {
    sign_unpack_impl<double>(packed, scale, out, n);
}
