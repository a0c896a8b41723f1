// RMSNorm with a fused residual add. One block per row: the row is read once
// to form x = input (+ residual), its sum of squares is a block reduction
// (warp shuffles, then one shared-memory step), and the normalized row is
// written. The per-row 1/rms is saved for the backward. The weight gradient
// is a sum over rows, accumulated with float atomics per block.
#include "common.cuh"

// y = x / rms(x) * w, with x = inp + residual (residual may be null).
// When residual is given, x is also written to x_out (the new residual stream).
extern "C" __global__ void rmsnorm_fwd(float* y, float* rstd, float* x_out, const float* inp, const float* residual,
                                       const float* w, int rows, int d, float eps) {
    __shared__ float scratch[32];
    int row = blockIdx.x;
    if (row >= rows) return;
    const float* a = inp + (long long)row * d;
    const float* r = residual ? residual + (long long)row * d : nullptr;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float x = a[i] + (r ? r[i] : 0.0f);
        ss += x * x;
    }
    ss = block_sum(ss, scratch);
    float rs = rsqrtf(ss / d + eps);
    if (threadIdx.x == 0) rstd[row] = rs;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float x = a[i] + (r ? r[i] : 0.0f);
        if (r) x_out[(long long)row * d + i] = x;
        y[(long long)row * d + i] = x * rs * w[i];
    }
}

// dx (+)= rstd * (dy*w - xhat * mean(dy*w*xhat)); dw += dy * xhat.
extern "C" __global__ void rmsnorm_bwd(float* dx, float* dw, const float* dy, const float* x, const float* w,
                                       const float* rstd, int rows, int d, int accumulate) {
    __shared__ float scratch[32];
    int row = blockIdx.x;
    if (row >= rows) return;
    const float* g = dy + (long long)row * d;
    const float* xr = x + (long long)row * d;
    float rs = rstd[row];
    float dot = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) dot += g[i] * w[i] * xr[i] * rs;
    float mean = block_sum(dot, scratch) / d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float xh = xr[i] * rs;
        float v = rs * (g[i] * w[i] - xh * mean);
        float* o = dx + (long long)row * d + i;
        *o = accumulate ? *o + v : v;
        atomicAdd(dw + i, g[i] * xh);
    }
}
