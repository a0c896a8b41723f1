// Rotary position embedding in the "rotate half" layout, in place. The
// cos/sin table (built on the host, YaRN's attention factor folded in) is
// indexed by each token's position. One thread per rotated pair; the
// backward applies the transposed rotation.
#include "common.cuh"

APPLIANCE_INLINE void rotate(float* x, const unsigned* pos, const float* cos_t, const float* sin_t, int n, int heads,
                             int half, float sign) {
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long total = (long long)n * heads * half;
    if (idx >= total) return;
    int i = idx % half;
    long long th = idx / half;  // token * heads + head
    int t = th / heads;
    float* h = x + th * 2 * half;
    long long p = (long long)pos[t] * half + i;
    float c = cos_t[p], s = sign * sin_t[p];
    float x1 = h[i], x2 = h[i + half];
    h[i] = x1 * c - x2 * s;
    h[i + half] = x2 * c + x1 * s;
}

extern "C" __global__ void rope_fwd(float* x, const unsigned* pos, const float* cos_t, const float* sin_t, int n, int heads, int half) {
    rotate(x, pos, cos_t, sin_t, n, heads, half, 1.0f);
}

extern "C" __global__ void rope_bwd(float* dx, const unsigned* pos, const float* cos_t, const float* sin_t, int n, int heads, int half) {
    rotate(dx, pos, cos_t, sin_t, n, heads, half, -1.0f);
}
