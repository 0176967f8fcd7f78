// Ring all-reduce step: dst = (dst + src) * scale, in place.
// Python wrapper: mlscale/ops/reduce_chunk.py (cupy.RawModule). Grid-stride loop, 1-D.
// Traffic per element: read dst, src; write dst = 3 arrays = 12 B in fp32.
// Bound: memory (2 flops per 12 bytes).

template <typename T>
__device__ void reduce_chunk_impl(T* dst, const T* src, long long n, T scale) {
    long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        dst[i] = (dst[i] + src[i]) * scale;
}

extern "C" __global__ void reduce_chunk_f32(float* dst, const float* src, long long n, float scale) {
    reduce_chunk_impl<float>(dst, src, n, scale);
}

extern "C" __global__ void reduce_chunk_f64(double* dst, const double* src, long long n,
                                            double scale) {
    reduce_chunk_impl<double>(dst, src, n, scale);
}
