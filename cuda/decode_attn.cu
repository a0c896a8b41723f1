// Decode attention (flash-decoding): one or a few new query tokens per
// sequence against a long bf16 KV cache, split along the keys so that even a
// single long sequence spreads over every SM.
//
// Design. Decode is memory-bound: every K/V byte is used by only the few
// query rows of its kv head, so the kernel is built around streaming the
// cache once with 16-byte coalesced loads, not around tensor cores.
// - decode_attn_partial: one CTA per (split, kv head x row tile, sequence).
//   The CTA's query rows are up to 8 of the (new token, query head) pairs of
//   one kv head group, so GQA heads share each K/V load. A key row of
//   head_dim bf16 is read by head_dim/8 lanes (16 bytes each); a warp step
//   covers 32/(head_dim/8) keys, each of the 4 warps walks its own keys with
//   its own online softmax (scores in log2 units, exp2), and the warps merge
//   through shared memory at the end. Keys past a row's causal position
//   (lengths[b] - q_len + i) or outside the CTA's key range score -inf.
//   It writes the split's partial O (f32) and LSE (natural log; -inf and O = 0
//   for a row that saw no key). With one split it writes the final result.
// - decode_attn_combine: the log-sum-exp merge of the splits, one warp per
//   (token, head) row, in a fixed order (deterministic).
// The head dim is a template parameter (64 or 128) behind one entry point.
#include "common.cuh"

#define DA_WARPS 4
#define DA_ROWS 8
#define DA_UNROLL 2
#define DA_NEG_INF (-__int_as_float(0x7f800000))
#define DA_LN2 0.69314718055994530942f

// 8 bf16 values (one 16-byte chunk) to f32.
APPLIANCE_INLINE void bf16x8_to_f32(const uint4 w, float* f) {
    const unsigned u[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        f[2 * i] = __uint_as_float(u[i] << 16);
        f[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
    }
}

template <int HD>
APPLIANCE_INLINE void decode_partial_body(float* out, float* lse, const unsigned short* q, const unsigned short* kc,
                                          const unsigned short* vc, const int* lengths, int batch, int q_len, int heads,
                                          int kv_heads, int cap, int chunk, int splits, int key_begin, int key_end,
                                          float scale_log2) {
    constexpr int LPR = HD / 8;    // lanes per key row
    constexpr int KPW = 32 / LPR;  // keys per warp step
    constexpr int STEP = DA_WARPS * KPW;
    __shared__ float sm_o[DA_WARPS][DA_ROWS][HD];
    __shared__ float sm_m[DA_WARPS][DA_ROWS];
    __shared__ float sm_l[DA_WARPS][DA_ROWS];

    const int split = blockIdx.x, b = blockIdx.z;
    const int group = heads / kv_heads;
    const int rows = q_len * group;
    const int tiles = (rows + DA_ROWS - 1) / DA_ROWS;
    const int g = blockIdx.y / tiles, tile = blockIdx.y % tiles;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int sub = lane % LPR, grp = lane / LPR;

    int len = lengths[b];
    len = len < 0 ? 0 : (len > cap ? cap : len);
    int lo = split * chunk;
    int hi = split == splits - 1 ? len : min(len, lo + chunk);
    lo = max(lo, key_begin);
    hi = min(hi, key_end);

    // This CTA's rows: their causal positions and query vectors (pre-scaled
    // so that scores come out in log2 units).
    int pos[DA_ROWS];
    float qf[DA_ROWS][8];
    int max_pos = -1;
#pragma unroll
    for (int r = 0; r < DA_ROWS; r++) {
        int row = tile * DA_ROWS + r;
        pos[r] = -1;
#pragma unroll
        for (int e = 0; e < 8; e++) qf[r][e] = 0.0f;
        if (row < rows) {
            int i = row / group, h = g * group + row % group;
            pos[r] = len - q_len + i;
            max_pos = max(max_pos, pos[r]);
            const uint4 w = *reinterpret_cast<const uint4*>(q + ((long long)(b * q_len + i) * heads + h) * HD + sub * 8);
            bf16x8_to_f32(w, qf[r]);
#pragma unroll
            for (int e = 0; e < 8; e++) qf[r][e] *= scale_log2;
        }
    }
    hi = min(hi, max_pos + 1);

    float o[DA_ROWS][8], m[DA_ROWS], l[DA_ROWS];
#pragma unroll
    for (int r = 0; r < DA_ROWS; r++) {
        m[r] = DA_NEG_INF;
        l[r] = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; e++) o[r][e] = 0.0f;
    }

    const long long kstride = (long long)kv_heads * HD;
    const long long base_off = ((long long)b * cap * kv_heads + g) * HD + sub * 8;
    const unsigned short* kb = kc + base_off;
    const unsigned short* vb = vc + base_off;

    for (int base = lo; base < hi; base += STEP * DA_UNROLL) {
        uint4 kr[DA_UNROLL], vr[DA_UNROLL];
        int key[DA_UNROLL];
#pragma unroll
        for (int u = 0; u < DA_UNROLL; u++) {
            key[u] = base + u * STEP + warp * KPW + grp;
            if (key[u] < hi) {
                kr[u] = *reinterpret_cast<const uint4*>(kb + key[u] * kstride);
                vr[u] = *reinterpret_cast<const uint4*>(vb + key[u] * kstride);
            } else {
                kr[u] = make_uint4(0, 0, 0, 0);
                vr[u] = make_uint4(0, 0, 0, 0);
            }
        }
        float s[DA_UNROLL][DA_ROWS];
#pragma unroll
        for (int u = 0; u < DA_UNROLL; u++) {
            float kf[8];
            bf16x8_to_f32(kr[u], kf);
#pragma unroll
            for (int r = 0; r < DA_ROWS; r++) {
                float acc = 0.0f;
#pragma unroll
                for (int e = 0; e < 8; e++) acc = fmaf(qf[r][e], kf[e], acc);
#pragma unroll
                for (int off = LPR / 2; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
                s[u][r] = (key[u] < hi && key[u] <= pos[r]) ? acc : DA_NEG_INF;
            }
        }
        float vf[DA_UNROLL][8];
#pragma unroll
        for (int u = 0; u < DA_UNROLL; u++) bf16x8_to_f32(vr[u], vf[u]);
#pragma unroll
        for (int r = 0; r < DA_ROWS; r++) {
            float mx = s[0][r];
#pragma unroll
            for (int u = 1; u < DA_UNROLL; u++) mx = fmaxf(mx, s[u][r]);
#pragma unroll
            for (int off = LPR; off < 32; off <<= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
            const float mn = fmaxf(m[r], mx);
            const float mu = mn == DA_NEG_INF ? 0.0f : mn;
            const float alpha = exp2f(m[r] - mu);
            m[r] = mn;
            l[r] *= alpha;
#pragma unroll
            for (int e = 0; e < 8; e++) o[r][e] *= alpha;
#pragma unroll
            for (int u = 0; u < DA_UNROLL; u++) {
                const float p = exp2f(s[u][r] - mu);
                l[r] += p;
#pragma unroll
                for (int e = 0; e < 8; e++) o[r][e] = fmaf(p, vf[u][e], o[r][e]);
            }
        }
    }

    // Within the warp: the key groups share m, so l and o simply add up.
#pragma unroll
    for (int r = 0; r < DA_ROWS; r++) {
#pragma unroll
        for (int off = LPR; off < 32; off <<= 1) {
            l[r] += __shfl_xor_sync(0xffffffffu, l[r], off);
#pragma unroll
            for (int e = 0; e < 8; e++) o[r][e] += __shfl_xor_sync(0xffffffffu, o[r][e], off);
        }
        if (grp == 0) {
#pragma unroll
            for (int e = 0; e < 8; e++) sm_o[warp][r][sub * 8 + e] = o[r][e];
        }
        if (lane == 0) {
            sm_m[warp][r] = m[r];
            sm_l[warp][r] = l[r];
        }
    }
    __syncthreads();

    // Across the warps, then out.
    for (int idx = threadIdx.x; idx < DA_ROWS * HD; idx += blockDim.x) {
        const int r = idx / HD, d = idx % HD;
        const int row = tile * DA_ROWS + r;
        if (row >= rows) continue;
        float mm = DA_NEG_INF;
#pragma unroll
        for (int w = 0; w < DA_WARPS; w++) mm = fmaxf(mm, sm_m[w][r]);
        float val = 0.0f, ls = DA_NEG_INF;
        if (mm != DA_NEG_INF) {
            float ll = 0.0f, acc = 0.0f;
#pragma unroll
            for (int w = 0; w < DA_WARPS; w++) {
                const float c = exp2f(sm_m[w][r] - mm);
                ll = fmaf(sm_l[w][r], c, ll);
                acc = fmaf(sm_o[w][r][d], c, acc);
            }
            val = acc / ll;
            ls = (mm + log2f(ll)) * DA_LN2;
        }
        const int i = row / group, h = g * group + row % group;
        const long long orow = ((long long)(split * batch + b) * q_len + i) * heads + h;
        out[orow * HD + d] = val;
        if (d == 0) lse[orow] = ls;
    }
}

// Partial attention of split blockIdx.x over keys [split*chunk, next split)
// ∩ [key_begin, key_end) ∩ the row's causal range. out: f32
// [splits, batch, q_len, heads, hd]; lse: f32 [splits, batch, q_len, heads].
// Grid: (splits, kv_heads * ceil(q_len*group/8), batch); 128 threads.
extern "C" __global__ void __launch_bounds__(128) decode_attn_partial(
    float* out, float* lse, const unsigned short* q, const unsigned short* k_cache, const unsigned short* v_cache,
    const int* lengths, int batch, int q_len, int heads, int kv_heads, int head_dim, int cap, int chunk, int splits,
    int key_begin, int key_end, float scale_log2) {
    if (head_dim == 64)
        decode_partial_body<64>(out, lse, q, k_cache, v_cache, lengths, batch, q_len, heads, kv_heads, cap, chunk, splits,
                                key_begin, key_end, scale_log2);
    else
        decode_partial_body<128>(out, lse, q, k_cache, v_cache, lengths, batch, q_len, heads, kv_heads, cap, chunk, splits,
                                 key_begin, key_end, scale_log2);
}

// out[row] = Σ_s exp(lse_s - LSE) · part_o[s, row], LSE = log Σ_s exp(lse_s),
// over rows = batch·q_len·heads; splits with lse -inf contribute nothing.
// One warp per row, 4 rows per 128-thread block; splits <= 128.
extern "C" __global__ void __launch_bounds__(128) decode_attn_combine(float* out, float* lse, const float* part_o,
                                                                      const float* part_lse, int rows, int hd,
                                                                      int splits) {
    __shared__ float sm_w[4][128];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int row = blockIdx.x * 4 + warp;
    if (row >= rows) return;
    float mm = DA_NEG_INF;
    for (int s = 0; s < splits; s++) mm = fmaxf(mm, part_lse[(long long)s * rows + row]);
    if (mm == DA_NEG_INF) {
        for (int d = lane; d < hd; d += 32) out[(long long)row * hd + d] = 0.0f;
        if (lane == 0) lse[row] = DA_NEG_INF;
        return;
    }
    float sum = 0.0f;
    for (int s = lane; s < splits; s += 32) {
        const float w = expf(part_lse[(long long)s * rows + row] - mm);
        sm_w[warp][s] = w;
    }
    __syncwarp();
    for (int s = 0; s < splits; s++) sum += sm_w[warp][s];
    const float inv = 1.0f / sum;
    for (int d = lane; d < hd; d += 32) {
        float acc = 0.0f;
        for (int s = 0; s < splits; s++) acc = fmaf(sm_w[warp][s], part_o[((long long)s * rows + row) * hd + d], acc);
        out[(long long)row * hd + d] = acc * inv;
    }
    if (lane == 0) lse[row] = mm + logf(sum);
}
