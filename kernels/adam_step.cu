// Fused Adam / AdamW step with bias correction, in place (torch.optim.Adam / AdamW).
// Python wrapper: mlscale/ops/adam_step.py (cupy.RawModule). Grid-stride loop, 1-D.
// c1 = 1 - beta1 and c2 = 1 - beta2 are rounded once on the host, which also folds the
// bias corrections into step_size = lr / (1 - beta1^t) and bc2_sqrt = sqrt(1 - beta2^t).
// l2 is Adam's coupled weight decay; decay = 1 - lr*wd is AdamW's decoupled one (1 for Adam).
// Traffic per element: read p, g, m, v; write p, m, v = 7 arrays = 28 B in fp32.
// Bound: memory (about 12 flops and one sqrt per 28 bytes).

template <typename T>
__device__ void adam_step_impl(T* p, const T* g, T* m, T* v, long long n, T step_size,
                               T bc2_sqrt, T beta1, T c1, T beta2, T c2, T eps, T l2, T decay) {
    long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        T pi = p[i] * decay;
        T gi = g[i] + l2 * pi;
        T mi = beta1 * m[i] + c1 * gi;
        T vi = beta2 * v[i] + c2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = pi - step_size * mi / (sqrt(vi) / bc2_sqrt + eps);
    }
}

extern "C" __global__ void adam_step_f32(float* p, const float* g, float* m, float* v, long long n,
                                         float step_size, float bc2_sqrt, float beta1, float c1,
                                         float beta2, float c2, float eps, float l2, float decay) {
    adam_step_impl<float>(p, g, m, v, n, step_size, bc2_sqrt, beta1, c1, beta2, c2, eps, l2, decay);
}

extern "C" __global__ void adam_step_f64(double* p, const double* g, double* m, double* v,
                                         long long n, double step_size, double bc2_sqrt,
                                         double beta1, double c1, double beta2, double c2,
                                         double eps, double l2, double decay) {
    adam_step_impl<double>(p, g, m, v, n, step_size, bc2_sqrt, beta1, c1, beta2, c2, eps, l2, decay);
}
