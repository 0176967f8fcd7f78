// The reduction ladder, after Mark Harris, "Optimizing Parallel Reduction in CUDA"
// (NVIDIA, 2007): seven kernels that each sum a float array into one partial sum per
// block, from naive to fast. The host calls a kernel again on the partials until one
// value is left. Python: mlscale/ops/reduce_ladder.py (sum_cupy) and its numba-CUDA twin
// (sum_v0 .. sum_v6). Every kernel reads each element once: 4 B per element, 1 flop:
// memory-bound; the ladder is about removing everything that keeps it from that bound
// (Harris measured about 30x from reduce0 to the last kernel on a G80).
//
// Launch: blockDim.x = BLOCK (a power of two, >= 64), dynamic-free static shared memory
// of MAX_BLOCK floats. reduce3..reduce5 cover 2*blockDim elements per block; reduce6
// takes any grid (grid-stride).

#define MAX_BLOCK 512

// reduce0: interleaved addressing with a divergent branch (tid % (2s) == 0): in each
// warp only a few threads work, and % is slow.
extern "C" __global__ void reduce0(const float* x, float* out, long long n) {
    __shared__ float sdata[MAX_BLOCK];
    unsigned tid = threadIdx.x;
    long long i = (long long)blockIdx.x * blockDim.x + tid;
    sdata[tid] = (i < n) ? x[i] : 0.0f;
    __syncthreads();
    for (unsigned s = 1; s < blockDim.x; s *= 2) {
        if (tid % (2 * s) == 0) sdata[tid] += sdata[tid + s];
        __syncthreads();
    }
    if (tid == 0) out[blockIdx.x] = sdata[0];
}

// reduce1: interleaved addressing, strided index: no divergence, but shared-memory bank
// conflicts (threads of a warp hit the same bank 2s apart).
extern "C" __global__ void reduce1(const float* x, float* out, long long n) {
    __shared__ float sdata[MAX_BLOCK];
    unsigned tid = threadIdx.x;
    long long i = (long long)blockIdx.x * blockDim.x + tid;
    sdata[tid] = (i < n) ? x[i] : 0.0f;
    __syncthreads();
    for (unsigned s = 1; s < blockDim.x; s *= 2) {
        unsigned index = 2 * s * tid;
        if (index < blockDim.x) sdata[index] += sdata[index + s];
        __syncthreads();
    }
    if (tid == 0) out[blockIdx.x] = sdata[0];
}

// reduce2: sequential addressing: conflict-free, but half the threads idle from the
// first step on.
extern "C" __global__ void reduce2(const float* x, float* out, long long n) {
    __shared__ float sdata[MAX_BLOCK];
    unsigned tid = threadIdx.x;
    long long i = (long long)blockIdx.x * blockDim.x + tid;
    sdata[tid] = (i < n) ? x[i] : 0.0f;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (tid < s) sdata[tid] += sdata[tid + s];
        __syncthreads();
    }
    if (tid == 0) out[blockIdx.x] = sdata[0];
}

// reduce3: first add during the global load: each block covers 2*blockDim elements,
// so half as many blocks and no idle threads in the first step.
extern "C" __global__ void reduce3(const float* x, float* out, long long n) {
    __shared__ float sdata[MAX_BLOCK];
    unsigned tid = threadIdx.x;
    long long i = (long long)blockIdx.x * (blockDim.x * 2) + tid;
    float v = (i < n) ? x[i] : 0.0f;
    if (i + blockDim.x < n) v += x[i + blockDim.x];
    sdata[tid] = v;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (tid < s) sdata[tid] += sdata[tid + s];
        __syncthreads();
    }
    if (tid == 0) out[blockIdx.x] = sdata[0];
}

// The last warp needs no __syncthreads. Harris relied on implicit warp-synchronous
// execution through a volatile pointer; since Volta (independent thread scheduling) that
// is a race, so each step reads, syncs the warp, then writes (CUDA Programming Guide).
__device__ __forceinline__ void warp_reduce(volatile float* s, unsigned tid) {
    float v = s[tid];
    v += s[tid + 32]; __syncwarp(); s[tid] = v; __syncwarp();
    v += s[tid + 16]; __syncwarp(); s[tid] = v; __syncwarp();
    v += s[tid + 8];  __syncwarp(); s[tid] = v; __syncwarp();
    v += s[tid + 4];  __syncwarp(); s[tid] = v; __syncwarp();
    v += s[tid + 2];  __syncwarp(); s[tid] = v; __syncwarp();
    v += s[tid + 1];  __syncwarp(); s[tid] = v;
}

// reduce4: unroll the last warp: no __syncthreads and no loop overhead for s <= 32.
extern "C" __global__ void reduce4(const float* x, float* out, long long n) {
    __shared__ float sdata[MAX_BLOCK];
    unsigned tid = threadIdx.x;
    long long i = (long long)blockIdx.x * (blockDim.x * 2) + tid;
    float v = (i < n) ? x[i] : 0.0f;
    if (i + blockDim.x < n) v += x[i + blockDim.x];
    sdata[tid] = v;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 32; s >>= 1) {
        if (tid < s) sdata[tid] += sdata[tid + s];
        __syncthreads();
    }
    if (tid < 32) warp_reduce(sdata, tid);
    if (tid == 0) out[blockIdx.x] = sdata[0];
}

// reduce5: complete unrolling with the block size as a template parameter: every
// "if (BS >= ...)" is decided at compile time, so no loop is left at all.
template <unsigned BS>
__device__ void reduce5_impl(const float* x, float* out, long long n) {
    __shared__ float sdata[BS];
    unsigned tid = threadIdx.x;
    long long i = (long long)blockIdx.x * (BS * 2) + tid;
    float v = (i < n) ? x[i] : 0.0f;
    if (i + BS < n) v += x[i + BS];
    sdata[tid] = v;
    __syncthreads();
    if (BS >= 512) { if (tid < 256) sdata[tid] += sdata[tid + 256]; __syncthreads(); }
    if (BS >= 256) { if (tid < 128) sdata[tid] += sdata[tid + 128]; __syncthreads(); }
    if (BS >= 128) { if (tid < 64) sdata[tid] += sdata[tid + 64]; __syncthreads(); }
    if (tid < 32) warp_reduce(sdata, tid);
    if (tid == 0) out[blockIdx.x] = sdata[0];
}

extern "C" __global__ void reduce5_128(const float* x, float* out, long long n) {
    reduce5_impl<128>(x, out, n);
}
extern "C" __global__ void reduce5_256(const float* x, float* out, long long n) {
    reduce5_impl<256>(x, out, n);
}
extern "C" __global__ void reduce5_512(const float* x, float* out, long long n) {
    reduce5_impl<512>(x, out, n);
}

// reduce6: grid-stride loads (each thread sums many elements first: Harris's "algorithm
// cascading", a grid of a few blocks per SM is enough) and warp shuffles instead of
// shared memory: registers only, one shared slot per warp.
__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1)
        v += __shfl_down_sync(0xffffffffu, v, offset);
    return v;
}

extern "C" __global__ void reduce6(const float* x, float* out, long long n) {
    __shared__ float warp_sums[32];
    float v = 0.0f;
    long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        v += x[i];
    unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    v = warp_sum(v);
    if (lane == 0) warp_sums[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = (threadIdx.x < blockDim.x / 32) ? warp_sums[lane] : 0.0f;
        v = warp_sum(v);
        if (lane == 0) out[blockIdx.x] = v;
    }
}
