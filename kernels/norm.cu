// Sum of squares for L2 norms, accumulated in double: one partial sum per block.
// Python wrapper: mlscale/ops/norm.py (cupy.RawModule); the host (cupy) sums the partials
// and takes the square root. Grid-stride loads, warp-shuffle reduction (reduce6 of
// kernels/reduce.cu), then one value per warp through shared memory.
// Traffic per element: read x = 4 B in fp32 (8 B in fp64), 2 flops. Bound: memory.

__device__ __forceinline__ double warp_sum(double v) {
    for (int offset = 16; offset > 0; offset >>= 1)
        v += __shfl_down_sync(0xffffffffu, v, offset);
    return v;
}

template <typename T>
__device__ void sumsq_impl(const T* x, double* partials, long long n) {
    __shared__ double warp_sums[32];
    double acc = 0.0;
    long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        double v = (double)x[i];
        acc += v * v;
    }
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

extern "C" __global__ void sumsq_f32(const float* x, double* partials, long long n) {
    sumsq_impl<float>(x, partials, n);
}

extern "C" __global__ void sumsq_f64(const double* x, double* partials, long long n) {
    sumsq_impl<double>(x, partials, n);
}
