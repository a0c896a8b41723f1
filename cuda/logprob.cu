// Fused per-token log-prob and entropy of the next token over the LM head,
// forward and backward, without ever writing the [n x vocab] logits.
//
// Design. Every kernel is built on one tile: logits z[64 rows x 64 vocab] =
// H[rows, :] . W[vocab, :]^T, computed by 4 warps (each owns 16 rows and all
// 64 vocab columns, 8 mma.sync m16n8k16 tiles, bf16 in, f32 accumulate), the
// hidden dimension streamed through shared memory in 32-wide slices with a
// two-stage cp.async pipeline and read with ldmatrix (rows padded by 8 bf16
// so the 8 row addresses of an ldmatrix hit distinct banks).
//
// Forward (`logprob_entropy_fwd`): a CTA owns 64 rows and one contiguous
// range of vocabulary tiles (the grid's y dimension splits the vocabulary so
// that few rows still fill the GPU). Each thread folds the logits it holds
// into its own running (max m, s = sum e^(z-m), t = sum e^(z-m)(z-m)) per row;
// t is centred on m, which keeps the entropy ln(s) - t/s free of the
// cancellation of lse - E[z]. The four lanes that share a row merge at the end
// (shuffles in a fixed order), and one record per (split, row) goes to a
// workspace; `logprob_entropy_combine` merges the splits in order. Fixed
// reduction orders everywhere: results are bit-identical run to run.
//
// Backward: g = dL/dz = dlogp (onehot - p) - dH p (z - E[z]), with
// p = exp(z - lse) and E[z] = lse - H from the saved forward values. Each
// backward kernel recomputes two logits tiles, turns them into g (rounded to
// bf16 for the tensor cores: a relative error of 2^-9 per element of g, the
// products and sums stay f32), stores g in shared memory (128 deep along the
// summed dimension, to halve the read-modify-writes of the f32 outputs),
// then multiplies it by 32-wide slices of the other operand, adding into the
// f32 output rows that the CTA owns. `logprob_entropy_bwd_dhidden` owns 64 rows and loops
// over a range of the vocabulary (dH = g . W; the vocabulary is split over
// the grid's y when there are few row tiles, and the partial sums are added
// in split order by `logprob_entropy_dhidden_reduce`);
// `logprob_entropy_bwd_dw` owns 64 vocabulary rows and loops over the
// tokens (dW = g^T . H). Each output element has exactly one writer and a
// fixed summation order: no atomics.
//
// The chunked backward (the launcher's logprob_entropy_bwd_chunked) keeps
// only the elementwise step here, logprob_entropy_grad_chunk: cuBLAS
// computes each block of logits and the two products, which these
// self-contained kernels' per-slice read-modify-writes cannot match.
//
// Requirements (checked by the launchers): d a multiple of 8 (whole 16-byte
// chunks per row), 16-byte aligned hidden and weight buffers.
#include <cuda_bf16.h>
#include "common.cuh"

#define LP_BM 64          // rows per tile (4 warps x 16)
#define LP_BV 64          // vocabulary entries per tile
#define LP_BK 32          // hidden elements per pipeline stage
#define LP_LDK (LP_BK + 8)
#define LP_KP 128         // depth of the backward products (two g tiles)
#define LP_BD 32          // hidden slice of the backward products
#define LP_LDB (LP_BD + 8)
#define LP_LDG_H (2 * LP_BV + 8)  // g of dhidden: [64 rows][128 vocabulary]
#define LP_LDG_W (LP_BV + 8)      // g of dw: [128 rows][64 vocabulary]
#define LP_THREADS 128
#define LP_LOG2E 1.4426950408889634f
#define LP_NEG_INF (-__int_as_float(0x7f800000))

APPLIANCE_INLINE unsigned lp_smem(const void* p) { return static_cast<unsigned>(__cvta_generic_to_shared(p)); }

// Copy rows [row0, row0+ROWS) x cols [c0, c0+COLS) of a row-major bf16 matrix
// [nrows, ncols] (ncols % 8 == 0) into shared memory with row stride LD,
// 16 bytes per cp.async; chunks outside the matrix are zero-filled.
template <int ROWS, int COLS, int LD>
APPLIANCE_INLINE void lp_stage(__nv_bfloat16* dst, const __nv_bfloat16* src, int nrows, int ncols, int row0, int c0) {
    constexpr int PER_ROW = COLS / 8;
    for (int c = threadIdx.x; c < ROWS * PER_ROW; c += LP_THREADS) {
        int r = c / PER_ROW, cc = (c % PER_ROW) * 8;
        int gr = row0 + r, gc = c0 + cc;
        __nv_bfloat16* s = dst + r * LD + cc;
        if (gr < nrows && gc < ncols) {
            const __nv_bfloat16* g = src + (long long)gr * ncols + gc;
            asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(lp_smem(s)), "l"(g));
        } else {
            *reinterpret_cast<uint4*>(s) = make_uint4(0u, 0u, 0u, 0u);
        }
    }
}

APPLIANCE_INLINE void lp_mma(float* c, const unsigned* a, unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

APPLIANCE_INLINE void lp_ldsm_x4(unsigned* r, const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(lp_smem(p)));
}

APPLIANCE_INLINE void lp_ldsm_x4_t(unsigned* r, const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(lp_smem(p)));
}

// Shared memory of the logits tile: two pipeline stages of H and W slices.
struct LpTileSmem {
    __nv_bfloat16 h[2][LP_BM][LP_LDK];
    __nv_bfloat16 w[2][LP_BV][LP_LDK];
};

// acc = H[r0:r0+64, :] . W[v0:v0+64, :]^T for this warp's 16 rows. In the
// m16n8 accumulator layout, acc[j][0..1] are row lane/4, columns
// j*8 + 2*(lane%4) + {0,1}; acc[j][2..3] the same columns 8 rows down.
APPLIANCE_INLINE void lp_logits_tile(float (*acc)[4], LpTileSmem& sm, const __nv_bfloat16* H, const __nv_bfloat16* W,
                                     int n, int d, int vocab, int r0, int v0) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int j = 0; j < 8; ++j)
        for (int e = 0; e < 4; ++e) acc[j][e] = 0.0f;
    int kt_count = (d + LP_BK - 1) / LP_BK;
    lp_stage<LP_BM, LP_BK, LP_LDK>(&sm.h[0][0][0], H, n, d, r0, 0);
    lp_stage<LP_BV, LP_BK, LP_LDK>(&sm.w[0][0][0], W, vocab, d, v0, 0);
    asm volatile("cp.async.commit_group;\n" ::);
    for (int kt = 0; kt < kt_count; ++kt) {
        int buf = kt & 1;
        if (kt + 1 < kt_count) {
            lp_stage<LP_BM, LP_BK, LP_LDK>(&sm.h[buf ^ 1][0][0], H, n, d, r0, (kt + 1) * LP_BK);
            lp_stage<LP_BV, LP_BK, LP_LDK>(&sm.w[buf ^ 1][0][0], W, vocab, d, v0, (kt + 1) * LP_BK);
            asm volatile("cp.async.commit_group;\n" ::);
            asm volatile("cp.async.wait_group 1;\n" ::);
        } else {
            asm volatile("cp.async.wait_group 0;\n" ::);
        }
        __syncthreads();
        for (int ks = 0; ks < LP_BK / 16; ++ks) {
            unsigned a[4];
            lp_ldsm_x4(a, &sm.h[buf][warp * 16 + (lane & 15)][ks * 16 + (lane >> 4) * 8]);
            for (int j = 0; j < 8; j += 2) {
                unsigned b[4];
                lp_ldsm_x4(b, &sm.w[buf][j * 8 + (lane & 7) + ((lane >> 4) << 3)][ks * 16 + ((lane >> 3) & 1) * 8]);
                lp_mma(acc[j], a, b[0], b[1]);
                lp_mma(acc[j + 1], a, b[2], b[3]);
            }
        }
        __syncthreads();
    }
}

// Merge running statistics (m, s, t) with (m2, s2, t2); s == 0 means empty.
APPLIANCE_INLINE void lp_merge(float& m, float& s, float& t, float m2, float s2, float t2) {
    if (s2 == 0.0f) return;
    if (s == 0.0f) {
        m = m2, s = s2, t = t2;
        return;
    }
    float mn = fmaxf(m, m2);
    float r1 = exp2f((m - mn) * LP_LOG2E), r2 = exp2f((m2 - mn) * LP_LOG2E);
    t = r1 * (t + s * (m - mn)) + r2 * (t2 + s2 * (m2 - mn));
    s = s * r1 + s2 * r2;
    m = mn;
}

// Fold this thread's `cnt` logits of one row (z[0..cnt), columns col[i] in
// the vocabulary) into its running statistics.
APPLIANCE_INLINE void lp_fold(float& m, float& s, float& t, float& tz, const float* z, const int* col, int vocab, int target) {
    float tmax = LP_NEG_INF;
    for (int i = 0; i < 16; ++i)
        if (col[i] < vocab) tmax = fmaxf(tmax, z[i]);
    if (tmax == LP_NEG_INF) return;  // no column of this tile is in the vocabulary
    float mn = fmaxf(m, tmax);
    if (s > 0.0f) {
        float r = exp2f((m - mn) * LP_LOG2E);
        t = r * (t + s * (m - mn));
        s = s * r;
    }
    m = mn;
    for (int i = 0; i < 16; ++i) {
        if (col[i] < vocab) {
            float x = z[i] - mn;
            float e = exp2f(x * LP_LOG2E);
            s += e;
            t += e * x;
            if (col[i] == target) tz = z[i];
        }
    }
}

// partial: float4 [splits, n] of (m, s, t, target logit); split = blockIdx.y
// covers vocabulary tiles [split * tiles_per_split, ...).
extern "C" __global__ void __launch_bounds__(LP_THREADS, 2) logprob_entropy_fwd(float4* partial, const __nv_bfloat16* H,
                                                                             const __nv_bfloat16* W, const int* targets,
                                                                             int n, int d, int vocab, int tiles_per_split) {
    __shared__ __align__(16) LpTileSmem sm;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int r0 = blockIdx.x * LP_BM;
    int split = blockIdx.y;
    int rowA = r0 + warp * 16 + (lane >> 2), rowB = rowA + 8;
    int tgtA = rowA < n ? targets[rowA] : -1, tgtB = rowB < n ? targets[rowB] : -1;
    float mA = LP_NEG_INF, sA = 0.0f, tA = 0.0f, zA = 0.0f;
    float mB = LP_NEG_INF, sB = 0.0f, tB = 0.0f, zB = 0.0f;
    int vt_begin = split * tiles_per_split;
    int vt_end = min(vt_begin + tiles_per_split, (vocab + LP_BV - 1) / LP_BV);
    float acc[8][4];
    for (int vt = vt_begin; vt < vt_end; ++vt) {
        int v0 = vt * LP_BV;
        lp_logits_tile(acc, sm, H, W, n, d, vocab, r0, v0);
        float za[16], zb[16];
        int col[16];
        for (int j = 0; j < 8; ++j)
            for (int e = 0; e < 2; ++e) {
                za[j * 2 + e] = acc[j][e];
                zb[j * 2 + e] = acc[j][2 + e];
                col[j * 2 + e] = v0 + j * 8 + (lane & 3) * 2 + e;
            }
        lp_fold(mA, sA, tA, zA, za, col, vocab, tgtA);
        lp_fold(mB, sB, tB, zB, zb, col, vocab, tgtB);
    }
    // The four lanes of a quad hold the same rows: merge them in a fixed order.
    for (int o = 1; o < 4; o <<= 1) {
        float m2 = __shfl_xor_sync(0xffffffffu, mA, o), s2 = __shfl_xor_sync(0xffffffffu, sA, o);
        float t2 = __shfl_xor_sync(0xffffffffu, tA, o), z2 = __shfl_xor_sync(0xffffffffu, zA, o);
        float m3 = __shfl_xor_sync(0xffffffffu, mB, o), s3 = __shfl_xor_sync(0xffffffffu, sB, o);
        float t3 = __shfl_xor_sync(0xffffffffu, tB, o), z3 = __shfl_xor_sync(0xffffffffu, zB, o);
        // Both lanes of the pair must compute the same result: merge the
        // lower lane's statistics into the upper's in lane order.
        bool low = (lane & o) == 0;
        if (low) {
            lp_merge(mA, sA, tA, m2, s2, t2);
            lp_merge(mB, sB, tB, m3, s3, t3);
        } else {
            float a0 = m2, a1 = s2, a2 = t2, b0 = m3, b1 = s3, b2 = t3;
            lp_merge(a0, a1, a2, mA, sA, tA);
            lp_merge(b0, b1, b2, mB, sB, tB);
            mA = a0, sA = a1, tA = a2, mB = b0, sB = b1, tB = b2;
        }
        // Only one lane holds the target's logit; the others hold 0.
        zA = low ? zA + z2 : z2 + zA;
        zB = low ? zB + z3 : z3 + zB;
    }
    if ((lane & 3) == 0) {
        if (rowA < n) partial[(long long)split * n + rowA] = make_float4(mA, sA, tA, zA);
        if (rowB < n) partial[(long long)split * n + rowB] = make_float4(mB, sB, tB, zB);
    }
}

// One thread per row: merge the splits in order. A target outside
// [0, vocab) gives a NaN log-prob (the input is wrong; never a silent value).
extern "C" __global__ void logprob_entropy_combine(float* logprob, float* entropy, float* lse, const float4* partial,
                                                   const int* targets, int n, int vocab, int splits) {
    int row = blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= n) return;
    float m = LP_NEG_INF, s = 0.0f, t = 0.0f, tz = 0.0f;
    for (int k = 0; k < splits; ++k) {
        float4 p = partial[(long long)k * n + row];
        lp_merge(m, s, t, p.x, p.y, p.z);
        tz += p.w;
    }
    float ls = logf(s);
    float l = m + ls;
    int y = targets[row];
    lse[row] = l;
    entropy[row] = ls - t / s;
    logprob[row] = (y >= 0 && y < vocab) ? tz - l : __int_as_float(0x7fffffff);
}

// Shared memory of the backward: the logits tile's pipeline, which the
// product's two stages of 128 x 32 operand slices reuse (they are never
// live together), and g as bf16: [64 rows][128 vocab] for dhidden,
// [128 rows][64 vocab] for dw.
struct LpBwdSmem {
    union {
        LpTileSmem tile;
        __nv_bfloat16 b[2][LP_KP][LP_LDB];
    };
    __nv_bfloat16 g[LP_KP * LP_LDG_W];
};

// Recompute the logits of rows [r0, r0+64) x vocabulary [v0, v0+64) and
// store g = dL/dz (bf16) at gt (row stride ldg); zero outside the matrix.
APPLIANCE_INLINE void lp_grad_tile(LpBwdSmem& sm, __nv_bfloat16* gt, int ldg, const __nv_bfloat16* H, const __nv_bfloat16* W,
                                   const int* targets, const float* dlogp, const float* dent, const float* lse,
                                   const float* ent, int n, int d, int vocab, int r0, int v0) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float acc[8][4];
    lp_logits_tile(acc, sm.tile, H, W, n, d, vocab, r0, v0);
    for (int half = 0; half < 2; ++half) {
        int lr = warp * 16 + (lane >> 2) + half * 8;
        int row = r0 + lr;
        bool ok = row < n;
        float gl = ok ? dlogp[row] : 0.0f, ge = ok ? dent[row] : 0.0f;
        float l = ok ? lse[row] : 0.0f;
        float ez = ok ? l - ent[row] : 0.0f;
        int y = ok ? targets[row] : -1;
        for (int j = 0; j < 8; ++j) {
            int lc = j * 8 + (lane & 3) * 2;
            float g2[2];
            for (int e = 0; e < 2; ++e) {
                int col = v0 + lc + e;
                float z = acc[j][half * 2 + e];
                float p = exp2f((z - l) * LP_LOG2E);
                float g = gl * ((col == y ? 1.0f : 0.0f) - p) - ge * p * (z - ez);
                g2[e] = (ok && col < vocab) ? g : 0.0f;
            }
            *reinterpret_cast<__nv_bfloat162*>(&gt[lr * ldg + lc]) = __floats2bfloat162_rn(g2[0], g2[1]);
        }
    }
    __syncthreads();
}

// out[o0 + 0..64, :] (+)= A . B where sm.g gives A (as g for dhidden, as
// g^T for dw; 128 deep) and B = src[k0 + 0..128, :] (K x d, row-major),
// streamed in 32-wide slices of d through two cp.async stages. Each thread
// updates the same output elements every call: the caller's loop order is
// the summation order.
template <bool DW>
APPLIANCE_INLINE void lp_product(LpBwdSmem& sm, float* out, int out_rows, const __nv_bfloat16* src, int src_rows, int d,
                                 int o0, int k0, bool overwrite) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int slices = (d + LP_BD - 1) / LP_BD;
    // A fragments of g are the same for every slice: load them once.
    unsigned a[LP_KP / 16][4];
    for (int ks = 0; ks < LP_KP / 16; ++ks) {
        if (DW) {
            // A = g^T: rows of sm.g are K, columns are this warp's 16 output rows.
            lp_ldsm_x4_t(a[ks], &sm.g[(ks * 16 + (lane & 7) + (lane >> 4) * 8) * LP_LDG_W + warp * 16 + ((lane >> 3) & 1) * 8]);
        } else {
            lp_ldsm_x4(a[ks], &sm.g[(warp * 16 + (lane & 15)) * LP_LDG_H + ks * 16 + (lane >> 4) * 8]);
        }
    }
    lp_stage<LP_KP, LP_BD, LP_LDB>(&sm.b[0][0][0], src, src_rows, d, k0, 0);
    asm volatile("cp.async.commit_group;\n" ::);
    for (int sl = 0; sl < slices; ++sl) {
        int c0 = sl * LP_BD, buf = sl & 1;
        if (sl + 1 < slices) {
            lp_stage<LP_KP, LP_BD, LP_LDB>(&sm.b[buf ^ 1][0][0], src, src_rows, d, k0, c0 + LP_BD);
            asm volatile("cp.async.commit_group;\n" ::);
            asm volatile("cp.async.wait_group 1;\n" ::);
        } else {
            asm volatile("cp.async.wait_group 0;\n" ::);
        }
        __syncthreads();
        float acc[LP_BD / 8][4];
        for (int j = 0; j < LP_BD / 8; ++j)
            for (int e = 0; e < 4; ++e) acc[j][e] = 0.0f;
        for (int ks = 0; ks < LP_KP / 16; ++ks) {
            for (int j = 0; j < LP_BD / 8; j += 2) {
                unsigned b[4];
                lp_ldsm_x4_t(b, &sm.b[buf][ks * 16 + (lane & 7) + ((lane >> 3) & 1) * 8][j * 8 + (lane >> 4) * 8]);
                lp_mma(acc[j], a[ks], b[0], b[1]);
                lp_mma(acc[j + 1], a[ks], b[2], b[3]);
            }
        }
        for (int half = 0; half < 2; ++half) {
            int r = o0 + warp * 16 + (lane >> 2) + half * 8;
            if (r >= out_rows) continue;
            for (int j = 0; j < LP_BD / 8; ++j) {
                int c = c0 + j * 8 + (lane & 3) * 2;
                if (c >= d) continue;  // d % 8 == 0: both columns are in or out together
                float2* p = reinterpret_cast<float2*>(out + (long long)r * d + c);
                float2 v = make_float2(acc[j][half * 2], acc[j][half * 2 + 1]);
                if (!overwrite) {
                    float2 old = *p;
                    v.x += old.x, v.y += old.y;
                }
                *p = v;
            }
        }
        __syncthreads();
    }
}

// dhidden[n, d] = sum over vocabulary tiles of g . W, two tiles (128
// entries) per product. The grid's y splits the vocabulary
// (tiles_per_split tiles each, even) so that few row tiles still fill the
// GPU: split 0 writes dhidden, split k > 0 writes partial[k-1] ([n, d] f32
// each), and logprob_entropy_dhidden_reduce adds the partials in split order.
extern "C" __global__ void __launch_bounds__(LP_THREADS, 2) logprob_entropy_bwd_dhidden(
    float* dhidden, float* partial, const __nv_bfloat16* H, const __nv_bfloat16* W, const int* targets,
    const float* dlogp, const float* dent, const float* lse, const float* ent, int n, int d, int vocab,
    int tiles_per_split) {
    __shared__ __align__(16) LpBwdSmem sm;
    int r0 = blockIdx.x * LP_BM;
    int split = blockIdx.y;
    float* out = split == 0 ? dhidden : partial + (long long)(split - 1) * n * d;
    int vt_begin = split * tiles_per_split;
    int vt_end = min(vt_begin + tiles_per_split, (vocab + LP_BV - 1) / LP_BV);
    for (int vt = vt_begin; vt < vt_end; vt += 2) {
        // The second tile lies past the vocabulary at most (g = 0 there):
        // tiles_per_split is even.
        for (int t = 0; t < 2; ++t)
            lp_grad_tile(sm, sm.g + t * LP_BV, LP_LDG_H, H, W, targets, dlogp, dent, lse, ent, n, d, vocab, r0, (vt + t) * LP_BV);
        lp_product<false>(sm, out, n, W, vocab, d, r0, vt * LP_BV, vt == vt_begin);
    }
}

// dhidden[i] += partial[0][i] + partial[1][i] + ... (in this order), i < count.
extern "C" __global__ void logprob_entropy_dhidden_reduce(float* dhidden, const float* partial, long long count, int parts) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += (long long)gridDim.x * blockDim.x) {
        float v = dhidden[i];
        for (int k = 0; k < parts; ++k) v += partial[(long long)k * count + i];
        dhidden[i] = v;
    }
}

// dw[vocab, d] (+)= sum over row tiles of g^T . H, two row tiles (128
// tokens) per product; `accumulate` = 0 overwrites. With n == 0 the single
// (empty) pair of row tiles writes zeros.
extern "C" __global__ void __launch_bounds__(LP_THREADS, 2) logprob_entropy_bwd_dw(
    float* dw, const __nv_bfloat16* H, const __nv_bfloat16* W, const int* targets, const float* dlogp, const float* dent,
    const float* lse, const float* ent, int n, int d, int vocab, int accumulate) {
    __shared__ __align__(16) LpBwdSmem sm;
    int v0 = blockIdx.x * LP_BV;
    int rtiles = max((n + LP_BM - 1) / LP_BM, 1);
    for (int rt = 0; rt < rtiles; rt += 2) {
        for (int t = 0; t < 2; ++t)
            lp_grad_tile(sm, sm.g + t * LP_BM * LP_LDG_W, LP_LDG_W, H, W, targets, dlogp, dent, lse, ent, n, d, vocab, (rt + t) * LP_BM, v0);
        lp_product<true>(sm, dw, vocab, H, n, d, v0, rt * LP_BM, rt == 0 && !accumulate);
    }
}

// The chunked backward's elementwise step (logprob_entropy_bwd_chunked in
// the launcher): cuBLAS has written z = H[r0 .. r0+rows) . W[v0 .. v0+cols)^T
// as f32 [rows, cols]; this turns it into g = dL/dz, rounded to bf16 into
// [rows, cols], for the two cuBLAS products that follow (dH += g . W_chunk,
// dW_chunk (+)= g^T . H). The same g as lp_grad_tile's, element for element.
// Memory-bound: each thread owns one column, the grid's y walks the rows
// (the row's statistics are one broadcast load per warp).
extern "C" __global__ void logprob_entropy_grad_chunk(__nv_bfloat16* g, const float* z, const int* targets,
                                                      const float* dlogp, const float* dent, const float* lse,
                                                      const float* ent, int rows, int cols, int r0, int v0) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    for (int r = blockIdx.y; r < rows; r += gridDim.y) {
        int row = r0 + r;
        float gl = dlogp[row], ge = dent[row], l = lse[row];
        float ez = l - ent[row];
        long long i = (long long)r * cols + c;
        float zv = z[i];
        float p = exp2f((zv - l) * LP_LOG2E);
        float gv = gl * ((v0 + c == targets[row] ? 1.0f : 0.0f) - p) - ge * p * (zv - ez);
        g[i] = __float2bfloat16_rn(gv);
    }
}
