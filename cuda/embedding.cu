// Token embedding. Forward: one block per token row, threads stride over the
// hidden dimension (coalesced row copy). Backward: the rows come grouped by
// token id (a stable sort on the host, which has the ids anyway), one block
// per id sums its rows in row order and adds the sum to the table row once.
// Float atomics would let repeated ids meet in a different order each run,
// and the same training run would not give the same weights twice.
#include "common.cuh"

extern "C" __global__ void embedding_fwd(float* out, const float* table, const unsigned* ids, int n, int d) {
    int row = blockIdx.x;
    if (row >= n) return;
    const float* src = table + (long long)ids[row] * d;
    float* dst = out + (long long)row * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) dst[i] = src[i];
}

// order: the rows sorted by id (stably); starts[g]..starts[g + 1]: the
// positions in order of group g's rows, all of one id.
extern "C" __global__ void embedding_bwd(float* dtable, const float* dout, const unsigned* ids, const unsigned* order,
                                         const unsigned* starts, int groups, int d) {
    int g = blockIdx.x;
    if (g >= groups) return;
    unsigned s = starts[g], e = starts[g + 1];
    float* dst = dtable + (long long)ids[order[s]] * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float acc = 0.0f;
        for (unsigned j = s; j < e; ++j) acc += dout[(long long)order[j] * d + i];
        dst[i] += acc;
    }
}
