// Flash-attention forward on the Ampere tensor cores (mma.sync m16n8k16 bf16,
// f32 accumulate): packed variable-length causal GQA self-attention
// (`flash_attn_fwd_hd{64,128}`: O bf16 + LSE f32) and the ring-attention
// building block (`attn_block_fwd_hd{64,128}`: one query block against one
// key/value block with global position offsets, O f32 + LSE f32, partials kept
// in fp32 so a later merge loses nothing).
//
// Design (FlashAttention-2): a CTA owns BR = 16·WARPS·RG query rows of one
// head of one sequence; each warp owns RG groups of 16 of those rows and keeps
// their Q·K^T tiles S and O accumulators in registers (Q fragments are re-read
// from shared memory per k-step). Defaults: 4 warps with two row groups each
// (BR = 128, FA2's CTA) and key tiles of BC = 64: FA2's hd128 forward tiles.
// Two row groups per warp are the point: every K fragment (ldmatrix) and
// every V fragment (ldmatrix.trans) a warp reads from shared memory feeds two
// mma's instead of one, which halves the shared-memory traffic per FLOP that
// bounds the one-group (BR = 64) kernel, and a CTA streams its K/V tiles for
// twice the rows. The price is registers: at hd128 the O accumulators alone
// are 2·16·4 floats per thread, and with S of a 64-key tile (2·8·4 more)
// ptxas 12.4 spills 16 bytes at 255 registers on sm_90 (48 on sm_80). It
// stays: on an H100 these tiles ran 350-385 TFLOP/s against 306-328 for the
// spill-free 32-key tiles (`-DFA_HD128_BC=32`, about 245 registers) and
// 298-324 for one row group (docs/gpu-runs.md, 2026-11-27); .ci/run allows
// exactly this spill. The Q, K and V tiles take (BR + 2·BC)·HD bf16 of
// shared memory (32 KiB at hd64, 64 KiB at hd128), so they live in
// dynamic shared memory whose size the launcher passes; above 48 KiB a real
// GPU also needs the function's max-dynamic-shared-memory attribute raised,
// which the CUDA device does before such a launch. Key/value tiles of BC rows
// are staged in shared memory by cp.async (zero fill past the end), in
// an XOR swizzled layout (16-byte chunk c of row r lives at chunk c ^ (r & 7))
// so that ldmatrix reads of 8 rows hit 8 different bank groups without
// padding. One K and one V buffer overlap loads with math the FA2 way: V_j
// loads while S_j is computed, K_{j-1} loads while softmax and P·V_j run. Key
// tiles go from the last (diagonal) one down, so masking happens only on the
// few first tiles; tiles wholly above the diagonal are never visited. Online
// softmax runs in fp32 in the log2 domain (scores prescaled by scale·log2 e,
// ex2.approx), with -inf-safe rescaling: a row that has seen no visible key
// (including a row group wholly above the diagonal of a diagonal tile) keeps
// max = -inf and sum 0 and ends as O = 0, LSE = -inf. P is rounded to bf16 in
// registers and reused directly as the A operand of P·V (the m16n8
// accumulator layout of two neighbouring n-tiles is the m16k16 A layout); V's
// B operand comes from ldmatrix.trans. GQA maps query head h to kv head
// h / (heads / kv_heads). Packed CTAs are scheduled heaviest-first (the last
// query tile of each sequence has the most key tiles) and exit at once past
// their sequence's end.
#include <cuda_bf16.h>
#include "common.cuh"

namespace fa {

typedef __nv_bfloat16 bf16;
#define NEG_INF (-__int_as_float(0x7f800000))

APPLIANCE_INLINE unsigned smem_u32(const void* p) { return static_cast<unsigned>(__cvta_generic_to_shared(p)); }

// Element offset of 16-byte chunk `c` of row `r` in a swizzled [rows][HD] bf16 tile.
template <int HD>
APPLIANCE_INLINE int swz(int r, int c) {
    return r * HD + ((c ^ (r & 7)) << 3);
}

// Stage rows [0, ROWS) of a [rows, stride] bf16 matrix (HD columns used) into a
// swizzled tile; rows at or past `valid` are zero-filled (cp.async src-size 0,
// nothing is read from global memory for them, so their address may lie past
// the end of the matrix, as CUTLASS's zero-fill copies do). Thread i copies chunk i % CPR
// of rows i / CPR + k·RPI: RPI is a multiple of 8, so a thread's swizzle
// phase (row & 7) is the same in every pass, its shared address moves by a
// constant, and only one global pointer is kept (few registers, which the
// two-row-group kernels need for their accumulators).
template <int ROWS, int HD, int NT>
APPLIANCE_INLINE void load_tile(bf16* s, const bf16* g, long long stride, int valid) {
    constexpr int CPR = HD / 8;     // 16-byte chunks per row
    static_assert(NT % CPR == 0, "a pass of the threads covers whole rows");
    constexpr int RPI = NT / CPR;   // rows per pass
    static_assert(RPI % 8 == 0 && ROWS % RPI == 0, "passes keep the swizzle phase and cover the tile");
    const int r0 = threadIdx.x / CPR, c = threadIdx.x % CPR;
    const unsigned dst = smem_u32(s + swz<HD>(r0, c));
    const bf16* src = g + r0 * stride + c * 8;
#pragma unroll
    for (int it = 0; it < ROWS / RPI; ++it) {
        bool ok = r0 + it * RPI < valid;
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst + it * RPI * HD * 2),
                     "l"(src), "r"(ok ? 16 : 0));
        src += RPI * stride;
    }
}

APPLIANCE_INLINE void cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
APPLIANCE_INLINE void cp_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::); }

APPLIANCE_INLINE float ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

APPLIANCE_INLINE unsigned pack_bf16(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

APPLIANCE_INLINE void mma(float* c, const unsigned* a, unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// ldmatrix at a shared-memory byte address.
APPLIANCE_INLINE void ldsm_x4(unsigned* r, unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

APPLIANCE_INLINE void ldsm_x4_t(unsigned* r, unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// ldmatrix addresses in a swizzled tile, cheap to form in unrolled loops. A
// lane reads row `row` (with row & 7 == lane & 7 in every use here) at logical
// chunk 2·k + c (c = this lane's chunk bit). Its physical chunk is
// (2k + c) ^ (lane & 7) = 2·((k & ~3) | ((k & 3) ^ m)) + (c ^ (lane & 1)) with
// m = (lane >> 1) & 3, so the byte address is base[k & 3] + 32·(k & ~3): four
// per-lane registers and a compile-time offset.
struct SwzAddr {
    unsigned base[4];
    APPLIANCE_INLINE SwzAddr(unsigned tile, int row, int hd, int lane, int c) {
        int m = (lane >> 1) & 3;
        unsigned lo = ((c ^ lane) & 1) << 4;
#pragma unroll
        for (int j = 0; j < 4; ++j) base[j] = tile + row * hd * 2 + (((j ^ m) << 5) | lo);
    }
    APPLIANCE_INLINE unsigned at(int k, int row_offset_bytes) const { return base[k & 3] + 32 * (k & ~3) + row_offset_bytes; }
};

APPLIANCE_INLINE void store2(bf16* p, float a, float b) {
    *reinterpret_cast<unsigned*>(p) = pack_bf16(a, b);
}
APPLIANCE_INLINE void store2(float* p, float a, float b) { *reinterpret_cast<float2*>(p) = make_float2(a, b); }

// Tile configuration per head dim. A CTA has WARPS warps; each warp owns RG
// row groups of 16 query rows (BR = 16·WARPS·RG rows per CTA) and walks the
// keys in tiles of BC. Each macro below can be set at compile time (e.g.
// -DFA_HD128_RG=1) to build variants for a tile sweep; the launcher
// (src/backend/gpu/flash_attn.rs) must agree with the defaults on BR, the
// thread count and the shared bytes.
#ifndef FA_HD64_WARPS
#define FA_HD64_WARPS 4
#endif
#ifndef FA_HD64_RG
#define FA_HD64_RG 2
#endif
#ifndef FA_HD64_BC
#define FA_HD64_BC 64
#endif
#ifndef FA_HD128_WARPS
#define FA_HD128_WARPS 4
#endif
#ifndef FA_HD128_RG
#define FA_HD128_RG 2
#endif
#ifndef FA_HD128_BC
#define FA_HD128_BC 64
#endif

template <int HD, int W, int R, int C>
struct TileCfg {
    static constexpr int WARPS = W, RG = R, BC = C;
    static constexpr int BR = 16 * W * R;   // query rows per CTA
    static constexpr int THREADS = 32 * W;
    static_assert(R == 1 || R == 2, "a warp owns one or two 16-row groups");
    static_assert(C % 16 == 0 && C >= 16, "BC must be a multiple of 16 (the k-steps of P·V)");
};
template <int HD>
struct Cfg;
template <>
struct Cfg<64> : TileCfg<64, FA_HD64_WARPS, FA_HD64_RG, FA_HD64_BC> {};
template <>
struct Cfg<128> : TileCfg<128, FA_HD128_WARPS, FA_HD128_RG, FA_HD128_BC> {};

// One CTA: query rows [m0, m0 + BR) of head blockIdx.y. Row `base` of Q/O/LSE
// is row 0 of the query block, row `base` of K/V row 0 of the key block (the
// offset is applied where each pointer is used, so that no pointer stays live
// across the key loop for nothing). Key j is visible to query i iff j < lk and
// (!causal or j <= i + diag).
template <int HD, typename OutT>
APPLIANCE_INLINE void attn_tile(OutT* __restrict__ O, float* __restrict__ LSE, const bf16* __restrict__ Q,
                                const bf16* __restrict__ K, const bf16* __restrict__ V, int lq, int lk, int diag,
                                bool causal, int heads, int kv_heads, float scale_log2, int m_block,
                                long long base) {
    typedef Cfg<HD> C;
    constexpr int RG = C::RG, BC = C::BC, BR = C::BR, NT = C::THREADS;
    constexpr int KS = HD / 16;  // k-steps of Q·K^T
    constexpr int NS = BC / 8;   // n-tiles of S
    constexpr int ND = HD / 8;   // n-tiles of O
    constexpr int RG_BYTES = 16 * HD * 2;  // one 16-row group of a tile
    extern __shared__ __align__(128) unsigned char fa_smem[];
    bf16* sQ = reinterpret_cast<bf16*>(fa_smem);
    bf16* sK = sQ + BR * HD;
    bf16* sV = sK + BC * HD;

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int h = blockIdx.y, hk = h / (heads / kv_heads);
    const int m0 = m_block * BR;
    const int wrow = warp * RG * 16;  // this warp's first row within the tile
    const long long qs = (long long)heads * HD, ks = (long long)kv_heads * HD;
    const bf16* Qh = Q + (base + m0) * qs + h * HD;
    const bf16* Kh = K + base * ks + hk * HD;
    const bf16* Vh = V + base * ks + hk * HD;

    // Keys visible to some row of this tile: j < kend.
    int kend = lk;
    if (causal) kend = min(lk, m0 + BR + diag);
    const int n_tiles = kend > 0 ? (kend + BC - 1) / BC : 0;

    float o[RG][ND][4];
#pragma unroll
    for (int rg = 0; rg < RG; ++rg)
#pragma unroll
        for (int d = 0; d < ND; ++d)
#pragma unroll
            for (int e = 0; e < 4; ++e) o[rg][d][e] = 0.0f;
    // Running max (log2 domain) and sum of rows g (index 0) and g + 8 (index 1) of each row group.
    float mrow[RG][2], lrow[RG][2];
#pragma unroll
    for (int rg = 0; rg < RG; ++rg)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            mrow[rg][r] = NEG_INF;
            lrow[rg][r] = 0.0f;
        }

    if (n_tiles > 0) {
        load_tile<BR, HD, NT>(sQ, Qh, qs, lq - m0);
        int n0 = (n_tiles - 1) * BC;
        load_tile<BC, HD, NT>(sK, Kh + n0 * ks, ks, lk - n0);
        cp_commit();
        cp_wait_all();
        __syncthreads();
        const SwzAddr qa(smem_u32(sQ), wrow + (lane & 15), HD, lane, lane >> 4);
        const SwzAddr ka(smem_u32(sK), (lane >> 4) * 8 + (lane & 7), HD, lane, (lane >> 3) & 1);
        const SwzAddr va(smem_u32(sV), ((lane >> 3) & 1) * 8 + (lane & 7), HD, lane, lane >> 4);

        for (int nb = n_tiles - 1; nb >= 0; --nb) {
            n0 = nb * BC;
            cp_wait_all();
            __syncthreads();  // K_nb has landed; every warp is done with the previous V
            load_tile<BC, HD, NT>(sV, Vh + n0 * ks, ks, lk - n0);
            cp_commit();

            // S = Q·K^T: each K fragment is read from shared memory once and
            // multiplied into all RG row groups.
            float s[RG][NS][4];
#pragma unroll
            for (int rg = 0; rg < RG; ++rg)
#pragma unroll
                for (int n = 0; n < NS; ++n)
#pragma unroll
                    for (int e = 0; e < 4; ++e) s[rg][n][e] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < KS; ++kk) {
                unsigned q[RG][4];
#pragma unroll
                for (int rg = 0; rg < RG; ++rg) ldsm_x4(q[rg], qa.at(kk, rg * RG_BYTES));
#pragma unroll
                for (int n = 0; n < NS; n += 2) {
                    unsigned b[4];
                    ldsm_x4(b, ka.at(kk, n * 8 * HD * 2));
#pragma unroll
                    for (int rg = 0; rg < RG; ++rg) {
                        mma(s[rg][n], q[rg], b[0], b[1]);
                        mma(s[rg][n + 1], q[rg], b[2], b[3]);
                    }
                }
            }

            // Mask only tiles that cross the diagonal or the end of the keys:
            // key column n0 + col is visible to a row iff col < that row's limit.
            if (n0 + BC > lk || (causal && n0 + BC - 1 > m0 + diag)) {
                const int row0 = m0 + wrow + g + diag - n0, keys = lk - n0;
#pragma unroll
                for (int rg = 0; rg < RG; ++rg)
#pragma unroll
                    for (int h8 = 0; h8 < 2; ++h8) {
                        const int limit = causal ? min(keys, row0 + rg * 16 + h8 * 8 + 1) : keys;
#pragma unroll
                        for (int n = 0; n < NS; ++n)
#pragma unroll
                            for (int e = 0; e < 2; ++e)
                                if (n * 8 + 2 * t + e >= limit) s[rg][n][2 * h8 + e] = NEG_INF;
                    }
            }

            cp_wait_all();
            __syncthreads();  // V_nb has landed; every warp is done with K_nb
            if (nb > 0) {
                load_tile<BC, HD, NT>(sK, Kh + (n0 - BC) * ks, ks, lk - (n0 - BC));
                cp_commit();
            }

            // Online softmax of rows g (r = 0) and g + 8 (r = 1) of each row group.
#pragma unroll
            for (int rg = 0; rg < RG; ++rg)
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    float mx = NEG_INF;
#pragma unroll
                    for (int n = 0; n < NS; ++n) mx = fmaxf(mx, fmaxf(s[rg][n][2 * r], s[rg][n][2 * r + 1]));
                    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                    float mnew = fmaxf(mrow[rg][r], mx * scale_log2);
                    float muse = mnew == NEG_INF ? 0.0f : mnew;
                    float alpha = ex2(mrow[rg][r] - muse);
                    mrow[rg][r] = mnew;
                    float sum = 0.0f;
#pragma unroll
                    for (int n = 0; n < NS; ++n)
#pragma unroll
                        for (int e = 0; e < 2; ++e) {
                            float p = ex2(fmaf(s[rg][n][2 * r + e], scale_log2, -muse));
                            s[rg][n][2 * r + e] = p;
                            sum += p;
                        }
                    lrow[rg][r] = lrow[rg][r] * alpha + sum;
#pragma unroll
                    for (int d = 0; d < ND; ++d) {
                        o[rg][d][2 * r] *= alpha;
                        o[rg][d][2 * r + 1] *= alpha;
                    }
                }

            // O += P · V, P from registers as the A operand; each V fragment
            // (ldmatrix.trans) is read once and used for all RG row groups.
#pragma unroll
            for (int kk = 0; kk < BC / 16; ++kk) {
                unsigned a[RG][4];
#pragma unroll
                for (int rg = 0; rg < RG; ++rg) {
                    a[rg][0] = pack_bf16(s[rg][2 * kk][0], s[rg][2 * kk][1]);
                    a[rg][1] = pack_bf16(s[rg][2 * kk][2], s[rg][2 * kk][3]);
                    a[rg][2] = pack_bf16(s[rg][2 * kk + 1][0], s[rg][2 * kk + 1][1]);
                    a[rg][3] = pack_bf16(s[rg][2 * kk + 1][2], s[rg][2 * kk + 1][3]);
                }
#pragma unroll
                for (int d = 0; d < ND; d += 2) {
                    unsigned b[4];
                    ldsm_x4_t(b, va.at(d / 2, kk * 16 * HD * 2));
#pragma unroll
                    for (int rg = 0; rg < RG; ++rg) {
                        mma(o[rg][d], a[rg], b[0], b[1]);
                        mma(o[rg][d + 1], a[rg], b[2], b[3]);
                    }
                }
            }
        }
    }

    // Normalize and store; a row with no visible key gets O = 0, LSE = -inf.
#pragma unroll
    for (int rg = 0; rg < RG; ++rg)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float l = lrow[rg][r];
            l += __shfl_xor_sync(0xffffffffu, l, 1);
            l += __shfl_xor_sync(0xffffffffu, l, 2);
            int row = m0 + wrow + rg * 16 + g + r * 8;
            if (row >= lq) continue;
            float inv = l > 0.0f ? 1.0f / l : 0.0f;
            OutT* orow = O + (base + row) * qs + h * HD;
#pragma unroll
            for (int d = 0; d < ND; ++d) store2(orow + d * 8 + 2 * t, o[rg][d][2 * r] * inv, o[rg][d][2 * r + 1] * inv);
            if (t == 0)
                LSE[(base + row) * heads + h] = l > 0.0f ? (mrow[rg][r] + __log2f(l)) * 0.69314718055994531f : NEG_INF;
        }
}

// Packed varlen causal self-attention: grid (ceil(max_seqlen / BR), heads, batch).
template <int HD>
APPLIANCE_INLINE void packed_fwd(bf16* O, float* LSE, const bf16* Q, const bf16* K, const bf16* V, const int* cu_seqlens,
                                 int heads, int kv_heads, float scale_log2) {
    constexpr int BR = Cfg<HD>::BR;
    const int b = blockIdx.z;
    const int start = cu_seqlens[b], len = cu_seqlens[b + 1] - start;
    const int m_block = gridDim.x - 1 - blockIdx.x;  // heaviest tiles first
    if (m_block * BR >= len) return;
    attn_tile<HD, bf16>(O, LSE, Q, K, V, len, len, 0, true, heads, kv_heads, scale_log2, m_block, start);
}

// Ring block: grid (ceil(lq / BR), heads, 1); diag = q_pos0 - k_pos0.
template <int HD>
APPLIANCE_INLINE void block_fwd(float* O, float* LSE, const bf16* Q, const bf16* K, const bf16* V, int lq, int lk, int diag,
                                int causal, int heads, int kv_heads, float scale_log2) {
    attn_tile<HD, float>(O, LSE, Q, K, V, lq, lk, diag, causal != 0, heads, kv_heads, scale_log2, blockIdx.x, 0);
}

}  // namespace fa

#define FWD_BOUNDS(HD) __launch_bounds__(fa::Cfg<HD>::THREADS)

extern "C" __global__ void FWD_BOUNDS(64)
    flash_attn_fwd_hd64(__nv_bfloat16* O, float* LSE, const __nv_bfloat16* Q, const __nv_bfloat16* K,
                        const __nv_bfloat16* V, const int* cu_seqlens, int heads, int kv_heads, float scale_log2) {
    fa::packed_fwd<64>(O, LSE, Q, K, V, cu_seqlens, heads, kv_heads, scale_log2);
}

extern "C" __global__ void FWD_BOUNDS(128)
    flash_attn_fwd_hd128(__nv_bfloat16* O, float* LSE, const __nv_bfloat16* Q, const __nv_bfloat16* K,
                         const __nv_bfloat16* V, const int* cu_seqlens, int heads, int kv_heads, float scale_log2) {
    fa::packed_fwd<128>(O, LSE, Q, K, V, cu_seqlens, heads, kv_heads, scale_log2);
}

extern "C" __global__ void FWD_BOUNDS(64)
    attn_block_fwd_hd64(float* O, float* LSE, const __nv_bfloat16* Q, const __nv_bfloat16* K, const __nv_bfloat16* V,
                        int lq, int lk, int diag, int causal, int heads, int kv_heads, float scale_log2) {
    fa::block_fwd<64>(O, LSE, Q, K, V, lq, lk, diag, causal, heads, kv_heads, scale_log2);
}

extern "C" __global__ void FWD_BOUNDS(128)
    attn_block_fwd_hd128(float* O, float* LSE, const __nv_bfloat16* Q, const __nv_bfloat16* K, const __nv_bfloat16* V,
                         int lq, int lk, int diag, int causal, int heads, int kv_heads, float scale_log2) {
    fa::block_fwd<128>(O, LSE, Q, K, V, lq, lk, diag, causal, heads, kv_heads, scale_log2);
}
