// RMSNorm with a fused residual add. One block per row: the row is read once
// to form x = input (+ residual), its sum of squares is a block reduction
// (warp shuffles, then one shared-memory step), and the normalized row is
// written. The per-row 1/rms is saved for the backward. The weight gradient
// is a sum over rows, taken by a second kernel in a fixed order (no float
// atomics, so a training run gives the same weights every time).
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

// dx (+)= rstd * (dy*w - xhat * mean(dy*w*xhat)). The weight gradient is
// rmsnorm_bwd_dw's.
extern "C" __global__ void rmsnorm_bwd(float* dx, const float* dy, const float* x, const float* w,
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
    }
}

// dw += sum over rows of dy * x * rstd. A block owns 32 columns (one per
// lane, so each warp's loads are coalesced); warp w takes rows w, w + W,
// w + 2W, ... in order, and the W partial sums are added in warp order.
extern "C" __global__ void rmsnorm_bwd_dw(float* dw, const float* dy, const float* x, const float* rstd, int rows, int d) {
    __shared__ float part[32][33];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    int col = blockIdx.x * 32 + lane;
    float acc = 0.0f;
    if (col < d)
        for (int r = warp; r < rows; r += warps) acc += dy[(long long)r * d + col] * (x[(long long)r * d + col] * rstd[r]);
    part[warp][lane] = acc;
    __syncthreads();
    if (warp == 0 && col < d) {
        float s = 0.0f;
        for (int w = 0; w < warps; ++w) s += part[w][lane];
        dw[col] += s;
    }
}
