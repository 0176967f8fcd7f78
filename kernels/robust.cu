// Byzantine-robust aggregation over k client vectors (Yin et al. 2018): coordinate-wise
// median and trimmed mean. Python wrapper: mlscale/ops/robust.py (cupy.RawModule).
// xs is a row-major (k, n) array; one thread per coordinate i copies xs[:, i] into a
// per-thread buffer (k <= MAX_K), insertion-sorts it, then takes the middle value(s) or
// the mean of the middle k - 2b values (summed in double).
// Traffic per coordinate: read k values, write 1 = 4(k+1) B in fp32. Bound: memory for
// small k (coalesced: neighbouring threads read neighbouring i), compute for large k
// (O(k^2) compares; the buffer lives in local memory, cached in L1).

#define MAX_K 64

template <typename T>
__device__ void sorted_column(const T* xs, int k, long long n, long long i, double* buf) {
    for (int j = 0; j < k; ++j) {
        double v = (double)xs[(long long)j * n + i];
        int t = j;
        while (t > 0 && buf[t - 1] > v) { buf[t] = buf[t - 1]; --t; }
        buf[t] = v;
    }
}

template <typename T>
__device__ void robust_impl(const T* xs, T* out, int k, long long n, int b, bool median) {
    double buf[MAX_K];
    long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        sorted_column<T>(xs, k, n, i, buf);
        if (median) {
            int h = k / 2;
            out[i] = (T)((k % 2) ? buf[h] : (buf[h - 1] + buf[h]) * 0.5);
        } else {
            double s = 0.0;
            for (int j = b; j < k - b; ++j) s += buf[j];
            out[i] = (T)(s / (k - 2 * b));
        }
    }
}

extern "C" __global__ void coordinate_median_f32(const float* xs, float* out, int k, long long n,
                                                 int b) {
    robust_impl<float>(xs, out, k, n, b, true);
}
extern "C" __global__ void coordinate_median_f64(const double* xs, double* out, int k, long long n,
                                                 int b) {
    robust_impl<double>(xs, out, k, n, b, true);
}
extern "C" __global__ void trimmed_mean_f32(const float* xs, float* out, int k, long long n, int b) {
    robust_impl<float>(xs, out, k, n, b, false);
}
extern "C" __global__ void trimmed_mean_f64(const double* xs, double* out, int k, long long n,
                                            int b) {
    robust_impl<double>(xs, out, k, n, b, false);
}
