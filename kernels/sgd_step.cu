// Fused SGD step with momentum / weight decay / Nesterov, in place (torch.optim.SGD).
// Python wrapper: mlscale/ops/sgd_step.py (cupy.RawModule). Grid-stride loop, 1-D.
// Traffic per element: read p, g (+buf), write p (+buf): 12 B (20 B with momentum) in fp32.
// Bound: memory (about 5 flops per 20 bytes).

template <typename T>
__device__ void sgd_step_impl(T* p, const T* g, T* buf, long long n, T lr, T momentum, T wd,
                              int nesterov, int use_momentum) {
    long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        T gi = g[i] + wd * p[i];
        if (use_momentum) {
            T b = momentum * buf[i] + gi;
            buf[i] = b;
            gi = nesterov ? gi + momentum * b : b;
        }
        p[i] -= lr * gi;
    }
}

extern "C" __global__ void sgd_step_f32(float* p, const float* g, float* buf, long long n,
                                        float lr, float momentum, float wd, int nesterov,
                                        int use_momentum) {
    sgd_step_impl<float>(p, g, buf, n, lr, momentum, wd, nesterov, use_momentum);
}

extern "C" __global__ void sgd_step_f64(double* p, const double* g, double* buf, long long n,
                                        double lr, double momentum, double wd, int nesterov,
                                        int use_momentum) {
    sgd_step_impl<double>(p, g, buf, n, lr, momentum, wd, nesterov, use_momentum);
}
