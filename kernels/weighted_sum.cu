// Weighted sum of k arrays: out[i] = sum_j w[j] * xs[j][i]   (FedAvg, model averaging, gossip).
// Python wrapper: mlscale/ops/weighted_sum.py (cupy.RawModule). xs is a device array of k
// row pointers, so a Python list of arrays is summed without stacking it first.
// Traffic per element: read k arrays, write 1 = 4(k+1) B in fp32, 2k flops.
// Bound: memory.

template <typename T>
__device__ void weighted_sum_impl(const T* const* xs, const T* w, T* out, int k, long long n) {
    long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        T acc = w[0] * xs[0][i];
        for (int j = 1; j < k; ++j) acc += w[j] * xs[j][i];
        out[i] = acc;
    }
}

extern "C" __global__ void weighted_sum_f32(const float* const* xs, const float* w, float* out,
                                            int k, long long n) {
    weighted_sum_impl<float>(xs, w, out, k, n);
}

extern "C" __global__ void weighted_sum_f64(const double* const* xs, const double* w, double* out,
                                            int k, long long n) {
    weighted_sum_impl<double>(xs, w, out, k, n);
}
