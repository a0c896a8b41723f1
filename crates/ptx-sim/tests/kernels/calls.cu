// Whole-kernel test of device-function calls that NVRTC keeps as .func: nested
// __noinline__ helpers with several parameters and a return value, a helper with a
// local array, one called under divergence, and a void helper writing memory.
// Note: without `volatile` on that array NVRTC 12.4 produced different PTX from run
// to run (register numbering, ld.local vectorization), which breaks freshness checks.
__device__ __noinline__ float poly(float x, int n) {
    float acc = 0.f, p = 1.f;
    for (int i = 0; i <= n; ++i) { acc += p / (float)(i + 1); p *= x; }
    return acc;
}
__device__ __noinline__ int hist_max(const int* v, int len) {
    volatile int h[8];  // volatile: NVRTC 12.4 emitted varying PTX for this function without it
    for (int i = 0; i < 8; ++i) h[i] = 0;
    for (int i = 0; i < len; ++i) h[v[i] & 7]++;
    int best = 0;
    for (int i = 1; i < 8; ++i) if (h[i] > h[best]) best = i;
    return best;
}
__device__ __noinline__ float combine(float a, float b, int k) { return poly(a, k) + poly(b, k + 1); }
__device__ __noinline__ void store2(float* out, int i, float a, float b) { out[2 * i] = a; out[2 * i + 1] = b; }

extern "C" __global__ void calls(const float* x, const int* v, float* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float a = combine(x[i], -x[i], i % 5);
    float b = (i & 1) ? poly(x[i], 3) : (float)hist_max(v + i, 9);
    store2(out, i, a, b);
}
