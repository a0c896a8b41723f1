// Whole-kernel test: a small tiled bf16 GEMM C[M,N] (f32) = A[M,K] (row-major bf16) x
// B[N,K]^T (row-major bf16, i.e. B is "col" for mma), one warp per 16x8 output tile.
// Tiles stage through shared memory with cp.async (zero fill past the edges), fragments
// load with ldmatrix, and the product runs on mma.sync.m16n8k16; edges are masked so
// M, N, K need not be multiples of the tile.
#include <cuda_bf16.h>
#include <cuda/std/cstdint>
using cuda::std::uint32_t; using cuda::std::uintptr_t;

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

extern "C" __global__ void mma_gemm_bf16(const __nv_bfloat16* A, const __nv_bfloat16* B, float* C,
                                         int M, int N, int K) {
    __shared__ __align__(16) __nv_bfloat16 As[16][16];
    __shared__ __align__(16) __nv_bfloat16 Bs[8][16];
    int lane = threadIdx.x;
    int m0 = blockIdx.y * 16, n0 = blockIdx.x * 8;
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    for (int k0 = 0; k0 < K; k0 += 16) {
        // A tile: 16 rows x 16 cols = 32 chunks of 8 bf16 (16 bytes); one chunk per lane.
        {
            int r = lane >> 1, c = (lane & 1) * 8;
            int gr = m0 + r;
            for (int j = 0; j < 8; ++j) {
                int gc = k0 + c + j;
                As[r][c + j] = (gr < M && gc < K) ? A[(size_t)gr * K + gc] : __float2bfloat16(0.f);
            }
        }
        // B tile: 8 rows (n) x 16 (k) = 16 chunks of 16 bytes; lanes 0..15, via cp.async
        // when the chunk is fully in range and aligned, else element-wise with zero fill.
        if (lane < 16) {
            int r = lane >> 1, c = (lane & 1) * 8;
            int gr = n0 + r, gc = k0 + c;
            const __nv_bfloat16* src = B + (size_t)gr * K + gc;
            bool full = gr < N && gc + 8 <= K && ((reinterpret_cast<uintptr_t>(src) & 15) == 0);
            if (full) {
                asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_u32(&Bs[r][c])), "l"(src));
            } else {
                for (int j = 0; j < 8; ++j)
                    Bs[r][c + j] = (gr < N && gc + j < K) ? B[(size_t)gr * K + gc + j] : __float2bfloat16(0.f);
            }
        }
        asm volatile("cp.async.commit_group;\n" ::);
        asm volatile("cp.async.wait_group 0;\n" ::);
        __syncwarp();
        uint32_t a[4], b[2];
        {
            // x4: lanes 0-15 address rows 0-15 at col 0, lanes 16-31 rows 0-15 at col 8.
            int r = lane & 15, c = (lane >> 4) * 8;
            asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                         : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3])
                         : "r"(smem_u32(&As[r][c])));
        }
        {
            // x2: lanes 0-7 rows 0-7 at k 0, lanes 8-15 rows 0-7 at k 8.
            int r = lane & 7, c = ((lane >> 3) & 1) * 8;
            asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                         : "=r"(b[0]), "=r"(b[1])
                         : "r"(smem_u32(&Bs[r][c])));
        }
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
        __syncwarp();
    }
    int g = lane >> 2, t = lane & 3;
    for (int i = 0; i < 4; ++i) {
        int r = m0 + g + (i >= 2 ? 8 : 0), c = n0 + t * 2 + (i & 1);
        if (r < M && c < N) C[(size_t)r * N + c] = acc[i];
    }
}

// The same GEMM with B stored [K][N] (row-major), loaded with the common idiom
// ldmatrix.x2.trans: lanes 0-15 address the 16 K rows of the tile at column n0.
extern "C" __global__ void mma_gemm_bf16_kn(const __nv_bfloat16* A, const __nv_bfloat16* B, float* C,
                                            int M, int N, int K) {
    __shared__ __align__(16) __nv_bfloat16 As[16][16];
    __shared__ __align__(16) __nv_bfloat16 Bs[16][8];
    int lane = threadIdx.x;
    int m0 = blockIdx.y * 16, n0 = blockIdx.x * 8;
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    for (int k0 = 0; k0 < K; k0 += 16) {
        for (int e = lane; e < 256; e += 32) {
            int r = e / 16, c = e % 16;
            As[r][c] = (m0 + r < M && k0 + c < K) ? A[(size_t)(m0 + r) * K + k0 + c] : __float2bfloat16(0.f);
        }
        for (int e = lane; e < 128; e += 32) {
            int r = e / 8, c = e % 8;
            Bs[r][c] = (k0 + r < K && n0 + c < N) ? B[(size_t)(k0 + r) * N + n0 + c] : __float2bfloat16(0.f);
        }
        __syncwarp();
        uint32_t a[4], b[2];
        {
            int r = lane & 15, c = (lane >> 4) * 8;
            asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                         : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3])
                         : "r"(smem_u32(&As[r][c])));
        }
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                     : "=r"(b[0]), "=r"(b[1])
                     : "r"(smem_u32(&Bs[lane & 15][0])));
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
        __syncwarp();
    }
    int g = lane >> 2, t = lane & 3;
    for (int i = 0; i < 4; ++i) {
        int r = m0 + g + (i >= 2 ? 8 : 0), c = n0 + t * 2 + (i & 1);
        if (r < M && c < N) C[(size_t)r * N + c] = acc[i];
    }
}
