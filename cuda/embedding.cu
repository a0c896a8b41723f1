// Token embedding. Forward: one block per token row, threads stride over the
// hidden dimension (coalesced row copy). Backward: scatter-add with float
// atomics, one block per token; rows of repeated ids meet in the atomics.
#include "common.cuh"

extern "C" __global__ void embedding_fwd(float* out, const float* table, const unsigned* ids, int n, int d) {
    int row = blockIdx.x;
    if (row >= n) return;
    const float* src = table + (long long)ids[row] * d;
    float* dst = out + (long long)row * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) dst[i] = src[i];
}

extern "C" __global__ void embedding_bwd(float* dtable, const float* dout, const unsigned* ids, int n, int d) {
    int row = blockIdx.x;
    if (row >= n) return;
    float* dst = dtable + (long long)ids[row] * d;
    const float* src = dout + (long long)row * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) atomicAdd(dst + i, src[i]);
}
