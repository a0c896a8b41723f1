// Sum of squares for the global gradient norm, in two deterministic passes:
// each block reduces a contiguous chunk into partial[blockIdx.x] (no
// atomics, so the result does not depend on block scheduling), then one
// block sums the partials in a fixed order. `scale_f32` then applies the
// clip coefficient to a gradient in place.
#include "common.cuh"

extern "C" __global__ void sum_squares_partial(float* partial, const float* g, long long n, long long chunk) {
    __shared__ float scratch[32];
    long long start = (long long)blockIdx.x * chunk;
    long long end = start + chunk < n ? start + chunk : n;
    float s = 0.0f;
    for (long long i = start + threadIdx.x; i < end; i += blockDim.x) s += g[i] * g[i];
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

extern "C" __global__ void sum_partials(float* out, const float* partial, int count) {
    __shared__ float scratch[32];
    float s = 0.0f;
    for (int i = threadIdx.x; i < count; i += blockDim.x) s += partial[i];
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) out[0] = s;
}

extern "C" __global__ void scale_f32(float* x, float s, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) x[i] *= s;
}
