// The fp32 merge of two partial attention results (the ring-attention
// building block's combine step), forward and backward.
//
// Design: a partial result is (O, LSE) over a subset of the keys, O
// normalized within the subset. The merge is the log-sum-exp combine
//   L = log(e^La + e^Lb),  O = ca·Oa + cb·Ob,  ca = e^(La-L), cb = e^(Lb-L),
// and its backward
//   dOa = ca·dO,  dLa = ca·(dO·(Oa - O) + dL)   (same for b).
// A part with LSE -inf (no visible key) gets weight 0 and gradient 0; two
// such parts give O = 0, L = -inf. Everything stays fp32: keeping partials in
// bf16 is what makes public ring implementations drift. Memory-bound and
// elementwise over rows of hd floats: one warp per row (coalesced loads,
// warp-shuffle dot products for the backward), 8 rows per 256-thread block;
// deterministic (no atomics).
#include "common.cuh"

#define AM_NEG_INF (-__int_as_float(0x7f800000))

// Merge weights of the two parts given their LSEs and the merged LSE.
APPLIANCE_INLINE void merge_weights(float la, float lb, float l, float& ca, float& cb) {
    ca = la == AM_NEG_INF ? 0.0f : expf(la - l);
    cb = lb == AM_NEG_INF ? 0.0f : expf(lb - l);
}

// out, a_out, b_out: f32 [rows, hd]; lse, a_lse, b_lse: f32 [rows].
extern "C" __global__ void __launch_bounds__(256) attn_merge_fwd(float* out, float* lse, const float* a_out,
                                                                 const float* a_lse, const float* b_out,
                                                                 const float* b_lse, int rows, int hd) {
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;
    const float la = a_lse[row], lb = b_lse[row];
    const float mx = fmaxf(la, lb);
    float l = AM_NEG_INF, ca = 0.0f, cb = 0.0f;
    if (mx != AM_NEG_INF) {
        l = mx + logf(expf(la - mx) + expf(lb - mx));
        merge_weights(la, lb, l, ca, cb);
    }
    const long long o = (long long)row * hd;
    // A part with weight 0 is not read at all (its O may be anything).
    for (int d = lane; d < hd; d += 32) {
        float v = 0.0f;
        if (ca != 0.0f) v = ca * a_out[o + d];
        if (cb != 0.0f) v = fmaf(cb, b_out[o + d], v);
        out[o + d] = v;
    }
    if (lane == 0) lse[row] = l;
}

// Gradients of attn_merge_fwd. dlse may be null (= 0). out/lse are the
// forward's outputs. All outputs are overwritten.
extern "C" __global__ void __launch_bounds__(256) attn_merge_bwd(
    float* da_out, float* da_lse, float* db_out, float* db_lse, const float* dout, const float* dlse, const float* a_out,
    const float* a_lse, const float* b_out, const float* b_lse, const float* out, const float* lse, int rows, int hd) {
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;
    float ca, cb;
    merge_weights(a_lse[row], b_lse[row], lse[row], ca, cb);
    const long long o = (long long)row * hd;
    float dot_a = 0.0f, dot_b = 0.0f;
    for (int d = lane; d < hd; d += 32) {
        const float g = dout[o + d], y = out[o + d];
        dot_a = fmaf(g, a_out[o + d] - y, dot_a);
        dot_b = fmaf(g, b_out[o + d] - y, dot_b);
        da_out[o + d] = ca * g;
        db_out[o + d] = cb * g;
    }
    dot_a = warp_sum(dot_a);
    dot_b = warp_sum(dot_b);
    if (lane == 0) {
        const float dl = dlse ? dlse[row] : 0.0f;
        da_lse[row] = ca != 0.0f ? ca * (dot_a + dl) : 0.0f;
        db_lse[row] = cb != 0.0f ? cb * (dot_b + dl) : 0.0f;
    }
}
