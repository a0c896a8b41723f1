// Whole-kernel test: C[M,N] (f32) = A[M,K] x B[K,N] with the nvcuda::wmma API
// (m16n16k16, row-major A and B as bf16 or f16), one warp per 16x16 output tile.
// Tiles are staged through shared memory with zero fill so that M, N, K need not
// be multiples of 16; the accumulator goes back through shared for a masked store.
#include <mma.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
using namespace nvcuda;

template <typename T>
__device__ void wmma_tile(const T* A, const T* B, float* C, int M, int N, int K) {
    __shared__ __align__(32) T As[16 * 16];
    __shared__ __align__(32) T Bs[16 * 16];
    __shared__ __align__(32) float Cs[16 * 16];
    int lane = threadIdx.x;
    int m0 = blockIdx.y * 16, n0 = blockIdx.x * 16;
    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
    wmma::fill_fragment(fc, 0.0f);
    for (int k0 = 0; k0 < K; k0 += 16) {
        for (int e = lane; e < 256; e += 32) {
            int r = e / 16, c = e % 16;
            As[e] = (m0 + r < M && k0 + c < K) ? A[(size_t)(m0 + r) * K + k0 + c] : T(0.f);
            Bs[e] = (k0 + r < K && n0 + c < N) ? B[(size_t)(k0 + r) * N + n0 + c] : T(0.f);
        }
        __syncwarp();
        wmma::load_matrix_sync(fa, As, 16);
        wmma::load_matrix_sync(fb, Bs, 16);
        wmma::mma_sync(fc, fa, fb, fc);
        __syncwarp();
    }
    for (int i = 0; i < fc.num_elements; ++i) fc.x[i] *= 2.0f;  // elementwise on fragments is legal
    wmma::store_matrix_sync(Cs, fc, 16, wmma::mem_col_major);
    __syncwarp();
    for (int e = lane; e < 256; e += 32) {
        int r = e % 16, c = e / 16;
        if (m0 + r < M && n0 + c < N) C[(size_t)(m0 + r) * N + n0 + c] = Cs[e];
    }
}

extern "C" __global__ void wmma_gemm_bf16(const __nv_bfloat16* A, const __nv_bfloat16* B, float* C, int M, int N, int K) {
    wmma_tile(A, B, C, M, N, K);
}
extern "C" __global__ void wmma_gemm_f16(const __half* A, const __half* B, float* C, int M, int N, int K) {
    wmma_tile(A, B, C, M, N, K);
}
