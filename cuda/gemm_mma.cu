// A tiled bf16 GEMM on the Ampere tensor cores: C[M,N] (f32) = A[M,K] ·
// B[N,K]^T, both bf16 row-major (B in the nn.Linear weight layout).
//
// Design: 128 threads (4 warps) per 64x64 block tile; each warp owns a 32x32
// sub-tile = 2x4 mma.sync m16n8k16 tiles accumulating in f32 registers. Each
// 16-wide K slice is staged in shared memory (rows padded by 8 bf16 so
// ldmatrix rows stay 16-byte aligned and spread over banks). Fully in-bounds
// 16-byte chunks come in with cp.async; chunks at the matrix edges are
// loaded element by element with zero fill, so any M, N, K works. This kernel
// proves the interpreter's tensor-core path end to end and serves tests;
// production GEMMs go to cuBLAS.
#include <cuda_bf16.h>
#include "common.cuh"

#define BM 64
#define BN 64
#define BK 16
#define LDS (BK + 8)

APPLIANCE_INLINE unsigned smem_u32(const void* p) { return static_cast<unsigned>(__cvta_generic_to_shared(p)); }

// Stage rows [row0, row0+64) x cols [k0, k0+16) of a [rows, K] matrix.
APPLIANCE_INLINE void stage(__nv_bfloat16 (*dst)[LDS], const __nv_bfloat16* src, int rows, int K, int row0, int k0) {
    int t = threadIdx.x;
    int r = t >> 1, c = (t & 1) * 8;
    int gr = row0 + r, gc = k0 + c;
    __nv_bfloat16* s = &dst[r][c];
    const __nv_bfloat16* g = src + (long long)gr * K + gc;
    bool full = gr < rows && gc + 8 <= K && (K % 8) == 0;
    if (full) {
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_u32(s)), "l"(g));
    } else {
        for (int j = 0; j < 8; ++j)
            s[j] = (gr < rows && gc + j < K) ? g[j] : __float2bfloat16_rn(0.0f);
    }
}

extern "C" __global__ void gemm_bf16_tn(float* C, const __nv_bfloat16* A, const __nv_bfloat16* B, int M, int N, int K) {
    __shared__ __align__(16) __nv_bfloat16 As[BM][LDS];
    __shared__ __align__(16) __nv_bfloat16 Bs[BN][LDS];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
    float acc[2][4][4];
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 4; ++j)
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

    for (int k0 = 0; k0 < K; k0 += BK) {
        stage(As, A, M, K, m0, k0);
        stage(Bs, B, N, K, n0, k0);
        asm volatile("cp.async.commit_group;\n" ::);
        asm volatile("cp.async.wait_group 0;\n" ::);
        __syncthreads();
        unsigned a[2][4], b[4][2];
        for (int i = 0; i < 2; ++i) {
            const __nv_bfloat16* p = &As[wm + i * 16 + (lane & 15)][(lane >> 4) * 8];
            asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                         : "=r"(a[i][0]), "=r"(a[i][1]), "=r"(a[i][2]), "=r"(a[i][3])
                         : "r"(smem_u32(p)));
        }
        for (int j = 0; j < 4; ++j) {
            const __nv_bfloat16* p = &Bs[wn + j * 8 + (lane & 7)][((lane >> 3) & 1) * 8];
            asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                         : "=r"(b[j][0]), "=r"(b[j][1])
                         : "r"(smem_u32(p)));
        }
        for (int i = 0; i < 2; ++i)
            for (int j = 0; j < 4; ++j) {
                float* c = acc[i][j];
                asm volatile(
                    "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                    "{%0,%1,%2,%3};\n"
                    : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                    : "r"(a[i][0]), "r"(a[i][1]), "r"(a[i][2]), "r"(a[i][3]), "r"(b[j][0]), "r"(b[j][1]));
            }
        __syncthreads();
    }
    // Accumulator layout of m16n8: c0,c1 at row lane/4, cols 2*(lane%4)+{0,1}; c2,c3 eight rows down.
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 4; ++j)
            for (int e = 0; e < 4; ++e) {
                int r = m0 + wm + i * 16 + (lane >> 2) + (e >> 1) * 8;
                int c = n0 + wn + j * 8 + (lane & 3) * 2 + (e & 1);
                if (r < M && c < N) C[(long long)r * N + c] = acc[i][j][e];
            }
}
