// Flash-attention backward for packed variable-length causal GQA attention:
// dQ, dK, dV recomputed from the forward's saved log-sum-exp, never storing
// the [L, L] probability matrix.
//
// Layouts (docs: issue 8 conventions): Q/dO/O bf16 [total, heads, hd]; K/V
// bf16 [total, kv_heads, hd]; LSE f32 [total, heads]; cu_seqlens i32
// [batch+1]; gradients f32. Query head h reads kv head h / (heads/kv_heads).
//
// Three kernels:
//  * flash_attn_bwd_preprocess: D[t,h] = dO·O (f32), one warp per row; it
//    also zeroes dQ when dQ is accumulated with atomics.
//  * flash_attn_bwd_dkdv_hd{64,128}: a CTA (4 warps) owns 64 keys of one kv
//    head; each warp owns 16 of them. It loops over the query heads of the
//    group, then over the query tiles that can see its keys, in a fixed
//    order, recomputing S^T = K Q^T, P^T, dP^T = V dO^T and dS^T in
//    registers, and accumulating dV += P^T dO and dK += dS^T Q (the
//    accumulator fragment of S^T is reused directly as the A operand). With
//    a dQ pointer (the fast mode) it also stages dS^T in shared memory and
//    adds scale·dS·K into dQ with f32 atomics.
//  * flash_attn_bwd_dq_hd{64,128}: the deterministic dQ: a CTA owns 64
//    queries of one head and loops over the key tiles it can see, dQ =
//    scale·dS K, written once without atomics (bit-reproducible).
//  * attn_block_bwd_{dkdv,dq}_hd{64,128}: the ring building block's
//    backward, the same two tile bodies on one query block against one
//    key/value block with a position shift and an optional causal mask,
//    given the final (global) LSE and D.
// Both families share one tile body per kernel, parameterized by a Geom:
// where the query and key rows start in their buffers, how many there are,
// and which (key, query) pairs are visible.
// Tensor cores: mma.sync m16n8k16 bf16 -> f32, operands through ldmatrix
// (.trans where the operand is stored k-major), tiles staged with cp.async
// with zero fill past the sequence end; masking handles causality, ragged
// tails and padding rows. P and dS are rounded to bf16 for the mma (as
// FlashAttention-2 does); everything else accumulates in f32.
//
// Tile sizes keep every kernel within 48 KB of static shared memory (so no
// opt-in launch attribute is needed) and free of register spills on sm_80 and
// sm_90: hd64 uses 64 keys x 64 queries (dK/dV) and 64 queries x 64 keys (dQ);
// hd128, whose dK/dV accumulators already take 128 registers per thread,
// streams 16-row tiles against the resident 64-row one.
#include <cuda_bf16.h>
#include "common.cuh"

typedef __nv_bfloat16 bf16;

#define NTHREADS 128
#define LOG2E 1.4426950408889634f
#define F32_INF __int_as_float(0x7f800000)

APPLIANCE_INLINE unsigned smem_u32(const void* p) { return static_cast<unsigned>(__cvta_generic_to_shared(p)); }

APPLIANCE_INLINE void ldsm_x4(unsigned (&r)[4], const bf16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}

APPLIANCE_INLINE void ldsm_x4_t(unsigned (&r)[4], const bf16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}

// c += a · b (m16n8k16, bf16 in, f32 accumulate).
APPLIANCE_INLINE void mma(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats as a bf16x2 register, `lo` in the low half (the lower column).
APPLIANCE_INLINE unsigned pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<unsigned*>(&v);
}

// The A fragment (16 x 16, k = columns 16kk..16kk+15) from two adjacent n8
// accumulator tiles of a 16-row result.
APPLIANCE_INLINE void acc_to_a(unsigned (&a)[4], const float (&c0)[4], const float (&c1)[4]) {
    a[0] = pack_bf16(c0[0], c0[1]);
    a[1] = pack_bf16(c0[2], c0[3]);
    a[2] = pack_bf16(c1[0], c1[1]);
    a[3] = pack_bf16(c1[2], c1[3]);
}

// Stage ROWS rows of HD bf16 (row r at g + r*stride) into s (row pitch LD)
// with cp.async; rows r >= nvalid are zero-filled (src-size 0). g must be a
// valid address (the tile's first row always is).
template <int ROWS, int HD, int LD>
APPLIANCE_INLINE void stage_rows(bf16* s, const bf16* g, long long stride, int nvalid) {
    constexpr int CHUNKS = HD / 8;
#pragma unroll 4
    for (int i = threadIdx.x; i < ROWS * CHUNKS; i += NTHREADS) {
        int r = i / CHUNKS, c = (i % CHUNKS) * 8;
        bool ok = r < nvalid;
        const bf16* src = ok ? g + r * stride + c : g;
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(s + r * LD + c)), "l"(src),
                     "r"(ok ? 16 : 0));
    }
}

APPLIANCE_INLINE void cp_async_wait_all() {
    asm volatile("cp.async.commit_group;\n" ::);
    asm volatile("cp.async.wait_group 0;\n" ::);
}

// Which rows a CTA works on: query rows q_row0.. (lq of them) and key rows
// k_row0.. (lk) of the packed buffers; key j is visible to query i iff
// j < lk, i < lq and, when causal, j <= i + shift (shift = q_pos0 − k_pos0).
struct Geom {
    int q_row0, k_row0, lq, lk, shift, causal;
    APPLIANCE_INLINE bool visible(int i, int j) const { return i < lq && j < lk && (!causal || j <= i + shift); }
};

// LSE of a query row pre-scaled by log2(e); +inf for padding rows and rows
// with no visible key at all (LSE = -inf), so their P underflows to 0.
APPLIANCE_INLINE float lse_log2(const float* lse, long long idx, bool ok) {
    float l = ok ? lse[idx] : -F32_INF;
    return l == -F32_INF ? F32_INF : l * LOG2E;
}

// D[row] = dO[row]·O[row] for rows = total*heads rows of hd; one warp per row.
// With dq non-null, that row of dq is zeroed (the atomic dQ accumulates into
// it); with delta null, only that is done.
extern "C" __global__ void flash_attn_bwd_preprocess(float* delta, float* dq, const bf16* dout, const bf16* out, int rows,
                                                     int hd) {
    int lane = threadIdx.x & 31;
    long long row = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;
    if (delta) {
        const bf16* a = dout + row * hd;
        const bf16* o = out + row * hd;
        float s = 0.0f;
        for (int i = lane; i < hd; i += 32) s += __bfloat162float(a[i]) * __bfloat162float(o[i]);
        s = warp_sum(s);
        if (lane == 0) delta[row] = s;
    }
    if (dq)
        for (int i = lane; i < hd; i += 32) dq[row * hd + i] = 0.0f;
}

// Shared memory of a dK/dV CTA. Declared in each kernel (not in the shared
// tile body) so that it is kernel-scope .shared in the PTX: a body used by
// two kernels would otherwise get module-scope buffers.
template <int HD, int BR>
struct DkdvSmem {
    __align__(16) bf16 K[64 * (HD + 8)];
    __align__(16) bf16 V[64 * (HD + 8)];
    __align__(16) bf16 Q[BR * (HD + 8)];
    __align__(16) bf16 dO[BR * (HD + 8)];
    __align__(16) bf16 dS[64 * (BR + 8)];
    float L[BR], D[BR];
};

template <int HD, int BK>
struct DqSmem {
    __align__(16) bf16 Q[64 * (HD + 8)];
    __align__(16) bf16 dO[64 * (HD + 8)];
    __align__(16) bf16 K[BK * (HD + 8)];
    __align__(16) bf16 V[BK * (HD + 8)];
    float L[64], D[64];
};

// dK, dV (and, with dq non-null, dQ by atomics) for the 64-key tile k0 of
// kv head g.
template <int HD, int BR>
APPLIANCE_INLINE void dkdv_tile(DkdvSmem<HD, BR>& sm, float* dk, float* dv, float* dq, const bf16* q, const bf16* k,
                                const bf16* v, const bf16* dout, const float* lse, const float* delta, const Geom G,
                                int k0, int g, int heads, int kv_heads, float scale) {
    constexpr int BC = 64, LD = HD + 8, LDS = BR + 8;
    static_assert(BR % 16 == 0 && BR <= 64, "query tile");
    bf16 *sK = sm.K, *sV = sm.V, *sQ = sm.Q, *sdO = sm.dO, *sdS = sm.dS;
    float *sL = sm.L, *sD = sm.D;

    if (k0 >= G.lk) return;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int grp = heads / kv_heads;
    const long long qs = (long long)heads * HD, kvs = (long long)kv_heads * HD;
    const float sl2 = scale * LOG2E;
    // First query tile that can see a key of this tile.
    const int qfirst = G.causal ? max(0, k0 - G.shift) / BR * BR : 0;

    stage_rows<BC, HD, LD>(sK, k + (long long)(G.k_row0 + k0) * kvs + g * HD, kvs, G.lk - k0);
    stage_rows<BC, HD, LD>(sV, v + (long long)(G.k_row0 + k0) * kvs + g * HD, kvs, G.lk - k0);

    float acc_k[HD / 8][4], acc_v[HD / 8][4];
#pragma unroll
    for (int n = 0; n < HD / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc_k[n][e] = acc_v[n][e] = 0.0f;

    for (int hh = 0; hh < grp; ++hh) {
        const int h = g * grp + hh;
        for (int q0 = qfirst; q0 < G.lq; q0 += BR) {
            __syncthreads();  // the previous tile is no longer read
            stage_rows<BR, HD, LD>(sQ, q + (long long)(G.q_row0 + q0) * qs + h * HD, qs, G.lq - q0);
            stage_rows<BR, HD, LD>(sdO, dout + (long long)(G.q_row0 + q0) * qs + h * HD, qs, G.lq - q0);
            if (threadIdx.x < BR) {
                int t = q0 + threadIdx.x;
                bool ok = t < G.lq;
                long long idx = (long long)(G.q_row0 + t) * heads + h;
                sL[threadIdx.x] = lse_log2(lse, idx, ok);
                sD[threadIdx.x] = ok ? delta[idx] : 0.0f;
            }
            cp_async_wait_all();
            __syncthreads();

            // S^T = K_w Q^T and dP^T = V_w dO^T, 16 keys x BR queries per warp.
            float s[BR / 8][4], dp[BR / 8][4];
#pragma unroll
            for (int j = 0; j < BR / 8; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) s[j][e] = dp[j][e] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < HD / 16; ++kk) {
                unsigned ak[4], av[4];
                ldsm_x4(ak, &sK[(warp * 16 + (lane & 15)) * LD + kk * 16 + (lane >> 4) * 8]);
                ldsm_x4(av, &sV[(warp * 16 + (lane & 15)) * LD + kk * 16 + (lane >> 4) * 8]);
#pragma unroll
                for (int j = 0; j < BR / 8; j += 2) {
                    const int off = (j * 8 + (lane & 7) + ((lane >> 4) << 3)) * LD + kk * 16 + ((lane >> 3) & 1) * 8;
                    unsigned bq[4], bo[4];
                    ldsm_x4(bq, &sQ[off]);
                    ldsm_x4(bo, &sdO[off]);
                    mma(s[j], ak, bq[0], bq[1]);
                    mma(s[j + 1], ak, bq[2], bq[3]);
                    mma(dp[j], av, bo[0], bo[1]);
                    mma(dp[j + 1], av, bo[2], bo[3]);
                }
            }
            // P^T = exp(scale·S^T − LSE) where visible; dS^T = P^T ∘ (dP^T − D).
#pragma unroll
            for (int j = 0; j < BR / 8; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int kr = k0 + warp * 16 + (lane >> 2) + (e >> 1) * 8;
                    const int qi = j * 8 + (lane & 3) * 2 + (e & 1);
                    const bool vis = G.visible(q0 + qi, kr);
                    const float p = vis ? exp2f(s[j][e] * sl2 - sL[qi]) : 0.0f;
                    s[j][e] = p;
                    dp[j][e] = p * (dp[j][e] - sD[qi]);
                }
            // dV += P^T dO, dK += dS^T Q (scale applied at the end).
#pragma unroll
            for (int kk = 0; kk < BR / 16; ++kk) {
                unsigned ap[4], ads[4];
                acc_to_a(ap, s[2 * kk], s[2 * kk + 1]);
                acc_to_a(ads, dp[2 * kk], dp[2 * kk + 1]);
#pragma unroll
                for (int n = 0; n < HD / 8; n += 2) {
                    const int off = (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + n * 8 + (lane >> 4) * 8;
                    unsigned bo[4], bq[4];
                    ldsm_x4_t(bo, &sdO[off]);
                    ldsm_x4_t(bq, &sQ[off]);
                    mma(acc_v[n], ap, bo[0], bo[1]);
                    mma(acc_v[n + 1], ap, bo[2], bo[3]);
                    mma(acc_k[n], ads, bq[0], bq[1]);
                    mma(acc_k[n + 1], ads, bq[2], bq[3]);
                }
            }
            if (dq) {
                // Fast mode: dQ[q, :] += scale · Σ_key dS[q, key] K[key, :].
#pragma unroll
                for (int j = 0; j < BR / 8; ++j) {
                    const int r = warp * 16 + (lane >> 2), c = j * 8 + (lane & 3) * 2;
                    *reinterpret_cast<unsigned*>(&sdS[r * LDS + c]) = pack_bf16(dp[j][0], dp[j][1]);
                    *reinterpret_cast<unsigned*>(&sdS[(r + 8) * LDS + c]) = pack_bf16(dp[j][2], dp[j][3]);
                }
                __syncthreads();
                constexpr int RG = BR / 16, CG = 4 / RG, WN = HD / CG;
                const int wr = (warp / CG) * 16, wc = (warp % CG) * WN;
                float acc[WN / 8][4];
#pragma unroll
                for (int n = 0; n < WN / 8; ++n)
#pragma unroll
                    for (int e = 0; e < 4; ++e) acc[n][e] = 0.0f;
#pragma unroll
                for (int kk = 0; kk < BC / 16; ++kk) {
                    unsigned a[4];
                    ldsm_x4_t(a, &sdS[(kk * 16 + (lane & 7) + ((lane >> 4) << 3)) * LDS + wr + ((lane >> 3) & 1) * 8]);
#pragma unroll
                    for (int n = 0; n < WN / 8; n += 2) {
                        unsigned bk[4];
                        ldsm_x4_t(bk, &sK[(kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + wc + n * 8 + (lane >> 4) * 8]);
                        mma(acc[n], a, bk[0], bk[1]);
                        mma(acc[n + 1], a, bk[2], bk[3]);
                    }
                }
#pragma unroll
                for (int n = 0; n < WN / 8; ++n)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int r = q0 + wr + (lane >> 2) + (e >> 1) * 8;
                        const int c = wc + n * 8 + (lane & 3) * 2 + (e & 1);
                        if (r < G.lq) atomicAdd(&dq[(G.q_row0 + r) * qs + h * HD + c], acc[n][e] * scale);
                    }
            }
        }
    }
    // Write this warp's 16 key rows (dK scaled).
#pragma unroll
    for (int n = 0; n < HD / 8; ++n)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int kr = k0 + warp * 16 + (lane >> 2) + half * 8;
            const int c = n * 8 + (lane & 3) * 2;
            if (kr < G.lk) {
                const long long o = (G.k_row0 + kr) * kvs + g * HD + c;
                *reinterpret_cast<float2*>(&dk[o]) = make_float2(acc_k[n][2 * half] * scale, acc_k[n][2 * half + 1] * scale);
                *reinterpret_cast<float2*>(&dv[o]) = make_float2(acc_v[n][2 * half], acc_v[n][2 * half + 1]);
            }
        }
}

// Deterministic dQ for the 64-query tile q0 of head h.
template <int HD, int BK>
APPLIANCE_INLINE void dq_tile(DqSmem<HD, BK>& sm, float* dq, const bf16* q, const bf16* k, const bf16* v,
                              const bf16* dout, const float* lse, const float* delta, const Geom G, int q0, int h,
                              int heads, int kv_heads, float scale) {
    constexpr int BQ = 64, LD = HD + 8;
    static_assert(BK % 16 == 0 && BK <= 64, "key tile");
    bf16 *sQ = sm.Q, *sdO = sm.dO, *sK = sm.K, *sV = sm.V;
    float *sL = sm.L, *sD = sm.D;

    if (q0 >= G.lq) return;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = h / (heads / kv_heads);
    const long long qs = (long long)heads * HD, kvs = (long long)kv_heads * HD;
    const float sl2 = scale * LOG2E;

    stage_rows<BQ, HD, LD>(sQ, q + (long long)(G.q_row0 + q0) * qs + h * HD, qs, G.lq - q0);
    stage_rows<BQ, HD, LD>(sdO, dout + (long long)(G.q_row0 + q0) * qs + h * HD, qs, G.lq - q0);
    if (threadIdx.x < BQ) {
        int t = q0 + threadIdx.x;
        bool ok = t < G.lq;
        long long idx = (long long)(G.q_row0 + t) * heads + h;
        sL[threadIdx.x] = lse_log2(lse, idx, ok);
        sD[threadIdx.x] = ok ? delta[idx] : 0.0f;
    }

    float acc[HD / 8][4];
#pragma unroll
    for (int n = 0; n < HD / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[n][e] = 0.0f;

    // Keys this tile can see: [0, kend).
    const int kend = G.causal ? min(G.lk, q0 + BQ + G.shift) : G.lk;
    for (int kt = 0; kt < kend; kt += BK) {
        __syncthreads();  // the previous key tile is no longer read
        stage_rows<BK, HD, LD>(sK, k + (long long)(G.k_row0 + kt) * kvs + g * HD, kvs, G.lk - kt);
        stage_rows<BK, HD, LD>(sV, v + (long long)(G.k_row0 + kt) * kvs + g * HD, kvs, G.lk - kt);
        cp_async_wait_all();
        __syncthreads();

        // S = Q_w K^T and dP = dO_w V^T, 16 queries x BK keys per warp.
        float s[BK / 8][4], dp[BK / 8][4];
#pragma unroll
        for (int j = 0; j < BK / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[j][e] = dp[j][e] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < HD / 16; ++kk) {
            unsigned aq[4], ao[4];
            ldsm_x4(aq, &sQ[(warp * 16 + (lane & 15)) * LD + kk * 16 + (lane >> 4) * 8]);
            ldsm_x4(ao, &sdO[(warp * 16 + (lane & 15)) * LD + kk * 16 + (lane >> 4) * 8]);
#pragma unroll
            for (int j = 0; j < BK / 8; j += 2) {
                const int off = (j * 8 + (lane & 7) + ((lane >> 4) << 3)) * LD + kk * 16 + ((lane >> 3) & 1) * 8;
                unsigned bk[4], bv[4];
                ldsm_x4(bk, &sK[off]);
                ldsm_x4(bv, &sV[off]);
                mma(s[j], aq, bk[0], bk[1]);
                mma(s[j + 1], aq, bk[2], bk[3]);
                mma(dp[j], ao, bv[0], bv[1]);
                mma(dp[j + 1], ao, bv[2], bv[3]);
            }
        }
#pragma unroll
        for (int j = 0; j < BK / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int qi = warp * 16 + (lane >> 2) + (e >> 1) * 8;
                const int kc = kt + j * 8 + (lane & 3) * 2 + (e & 1);
                const bool vis = G.visible(q0 + qi, kc);
                const float p = vis ? exp2f(s[j][e] * sl2 - sL[qi]) : 0.0f;
                dp[j][e] = p * (dp[j][e] - sD[qi]);
            }
        // dQ += dS K.
#pragma unroll
        for (int kk = 0; kk < BK / 16; ++kk) {
            unsigned a[4];
            acc_to_a(a, dp[2 * kk], dp[2 * kk + 1]);
#pragma unroll
            for (int n = 0; n < HD / 8; n += 2) {
                unsigned bk[4];
                ldsm_x4_t(bk, &sK[(kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + n * 8 + (lane >> 4) * 8]);
                mma(acc[n], a, bk[0], bk[1]);
                mma(acc[n + 1], a, bk[2], bk[3]);
            }
        }
    }
#pragma unroll
    for (int n = 0; n < HD / 8; ++n)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int qr = q0 + warp * 16 + (lane >> 2) + half * 8;
            const int c = n * 8 + (lane & 3) * 2;
            if (qr < G.lq)
                *reinterpret_cast<float2*>(&dq[(long long)(G.q_row0 + qr) * qs + h * HD + c]) =
                    make_float2(acc[n][2 * half] * scale, acc[n][2 * half + 1] * scale);
        }
}

#define DKDV_ARGS                                                                                                      \
    float *dk, float *dv, float *dq, const bf16 *q, const bf16 *k, const bf16 *v, const bf16 *dout, const float *lse, \
        const float *delta, const int *cu_seqlens, int heads, int kv_heads, float scale
#define DQ_ARGS                                                                                                        \
    float *dq, const bf16 *q, const bf16 *k, const bf16 *v, const bf16 *dout, const float *lse, const float *delta,    \
        const int *cu_seqlens, int heads, int kv_heads, float scale

// Packed varlen causal self-attention: sequence blockIdx.y. Traps when a
// sequence is longer than the grid covers (max_seqlen too small).
APPLIANCE_INLINE Geom varlen_geom(const int* cu) {
    const int start = cu[blockIdx.y], len = cu[blockIdx.y + 1] - start;
    if (blockIdx.x == 0 && threadIdx.x == 0 && len > (int)gridDim.x * 64) __trap();
    return Geom{start, start, len, len, 0, 1};
}

// Grid: (ceil(max_seqlen / 64), batch, kv_heads).
extern "C" __global__ void __launch_bounds__(NTHREADS) flash_attn_bwd_dkdv_hd64(DKDV_ARGS) {
    __shared__ DkdvSmem<64, 64> sm;
    dkdv_tile<64, 64>(sm, dk, dv, dq, q, k, v, dout, lse, delta, varlen_geom(cu_seqlens), blockIdx.x * 64, blockIdx.z, heads,
                      kv_heads, scale);
}

extern "C" __global__ void __launch_bounds__(NTHREADS) flash_attn_bwd_dkdv_hd128(DKDV_ARGS) {
    __shared__ DkdvSmem<128, 16> sm;
    dkdv_tile<128, 16>(sm, dk, dv, dq, q, k, v, dout, lse, delta, varlen_geom(cu_seqlens), blockIdx.x * 64, blockIdx.z,
                       heads, kv_heads, scale);
}

// Grid: (ceil(max_seqlen / 64), batch, heads).
extern "C" __global__ void __launch_bounds__(NTHREADS) flash_attn_bwd_dq_hd64(DQ_ARGS) {
    __shared__ DqSmem<64, 64> sm;
    dq_tile<64, 64>(sm, dq, q, k, v, dout, lse, delta, varlen_geom(cu_seqlens), blockIdx.x * 64, blockIdx.z, heads, kv_heads,
                    scale);
}

extern "C" __global__ void __launch_bounds__(NTHREADS) flash_attn_bwd_dq_hd128(DQ_ARGS) {
    __shared__ DqSmem<128, 16> sm;
    dq_tile<128, 16>(sm, dq, q, k, v, dout, lse, delta, varlen_geom(cu_seqlens), blockIdx.x * 64, blockIdx.z, heads,
                     kv_heads, scale);
}

// Ring block: queries [lq] at positions q_pos0.., keys [lk] at k_pos0..;
// shift = q_pos0 − k_pos0. Grids: dK/dV (ceil(lk/64), 1, kv_heads), dQ
// (ceil(lq/64), 1, heads).
#define BLOCK_ARGS int lq, int lk, int shift, int causal, int heads, int kv_heads, float scale

extern "C" __global__ void __launch_bounds__(NTHREADS)
    attn_block_bwd_dkdv_hd64(float* dk, float* dv, float* dq, const bf16* q, const bf16* k, const bf16* v,
                             const bf16* dout, const float* lse, const float* delta, BLOCK_ARGS) {
    __shared__ DkdvSmem<64, 64> sm;
    dkdv_tile<64, 64>(sm, dk, dv, dq, q, k, v, dout, lse, delta, Geom{0, 0, lq, lk, shift, causal}, blockIdx.x * 64,
                      blockIdx.z, heads, kv_heads, scale);
}

extern "C" __global__ void __launch_bounds__(NTHREADS)
    attn_block_bwd_dkdv_hd128(float* dk, float* dv, float* dq, const bf16* q, const bf16* k, const bf16* v,
                              const bf16* dout, const float* lse, const float* delta, BLOCK_ARGS) {
    __shared__ DkdvSmem<128, 16> sm;
    dkdv_tile<128, 16>(sm, dk, dv, dq, q, k, v, dout, lse, delta, Geom{0, 0, lq, lk, shift, causal}, blockIdx.x * 64,
                       blockIdx.z, heads, kv_heads, scale);
}

extern "C" __global__ void __launch_bounds__(NTHREADS)
    attn_block_bwd_dq_hd64(float* dq, const bf16* q, const bf16* k, const bf16* v, const bf16* dout, const float* lse,
                           const float* delta, BLOCK_ARGS) {
    __shared__ DqSmem<64, 64> sm;
    dq_tile<64, 64>(sm, dq, q, k, v, dout, lse, delta, Geom{0, 0, lq, lk, shift, causal}, blockIdx.x * 64, blockIdx.z,
                    heads, kv_heads, scale);
}

extern "C" __global__ void __launch_bounds__(NTHREADS)
    attn_block_bwd_dq_hd128(float* dq, const bf16* q, const bf16* k, const bf16* v, const bf16* dout, const float* lse,
                            const float* delta, BLOCK_ARGS) {
    __shared__ DqSmem<128, 16> sm;
    dq_tile<128, 16>(sm, dq, q, k, v, dout, lse, delta, Geom{0, 0, lq, lk, shift, causal}, blockIdx.x * 64, blockIdx.z,
                     heads, kv_heads, scale);
}
