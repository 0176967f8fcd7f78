// Top-k sparsification with error feedback: the element-wise passes around the selection.
// Python wrapper: mlscale/ops/topk_compress.py; the selection of the k largest |c| is
// cupy.partition + flatnonzero (CuPy's own primitives), ties broken by lowest index.
// topk_prepare: c = x + r stored into r, |c| into absc: read 8 B, write 8 B per fp32 element.
// topk_gather_zero: values[j] = r[idx[j]], r[idx[j]] = 0: k random accesses.
// topk_scatter: out[idx[j]] (+)= values[j] (decompression; out zeroed by the host unless
// accumulating). Bound: memory (random access for the k gathers and scatters).

template <typename T>
__device__ void prepare_impl(const T* x, T* r, T* absc, long long n) {
    long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        T c = x[i] + r[i];
        r[i] = c;
        absc[i] = fabs(c);
    }
}

template <typename T>
__device__ void gather_zero_impl(T* r, const int* idx, T* values, long long k) {
    long long stride = (long long)blockDim.x * gridDim.x;
    for (long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x; j < k; j += stride) {
        values[j] = r[idx[j]];
        r[idx[j]] = T(0);
    }
}

template <typename T>
__device__ void scatter_impl(const int* idx, const T* values, T* out, long long k, int accumulate) {
    long long stride = (long long)blockDim.x * gridDim.x;
    for (long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x; j < k; j += stride) {
        if (accumulate) out[idx[j]] += values[j];     // indices are unique within one message
        else            out[idx[j]] = values[j];
    }
}

extern "C" __global__ void topk_prepare_f32(const float* x, float* r, float* absc, long long n) {
    prepare_impl<float>(x, r, absc, n);
}
extern "C" __global__ void topk_prepare_f64(const double* x, double* r, double* absc, long long n) {
    prepare_impl<double>(x, r, absc, n);
}
extern "C" __global__ void topk_gather_zero_f32(float* r, const int* idx, float* values, long long k) {
    gather_zero_impl<float>(r, idx, values, k);
}
extern "C" __global__ void topk_gather_zero_f64(double* r, const int* idx, double* values,
                                                long long k) {
    gather_zero_impl<double>(r, idx, values, k);
}
extern "C" __global__ void topk_scatter_f32(const int* idx, const float* values, float* out,
                                            long long k, int accumulate) {
    scatter_impl<float>(idx, values, out, k, accumulate);
}
extern "C" __global__ void topk_scatter_f64(const int* idx, const double* values, double* out,
                                            long long k, int accumulate) {
    scatter_impl<double>(idx, values, out, k, accumulate);
}
