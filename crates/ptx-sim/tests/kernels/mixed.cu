// Whole-kernel tests shaped like the appliance's kernels: row-wise RMSNorm and
// softmax (warp + shared reductions, fast-math intrinsics, dynamic shared memory),
// SwiGLU, AdamW, a shared-memory tiled transpose on a 2D grid, an integer
// histogram with shared atomics and bit intrinsics, and a float atomic scatter.
#include <cuda_bf16.h>

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// One block per row; blockDim.x a multiple of 32 (<= 1024).
extern "C" __global__ void rmsnorm_bf16(const __nv_bfloat16* x, const __nv_bfloat16* w, __nv_bfloat16* y, int cols, float eps) {
    __shared__ float part[32];
    const __nv_bfloat16* xr = x + (size_t)blockIdx.x * cols;
    float ss = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = __bfloat162float(xr[c]);
        ss += v * v;
    }
    ss = warp_sum(ss);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = ss;
    __syncthreads();
    if (threadIdx.x < 32) {
        float v = threadIdx.x < (blockDim.x >> 5) ? part[threadIdx.x] : 0.f;
        v = warp_sum(v);
        if (threadIdx.x == 0) part[0] = rsqrtf(v / cols + eps);
    }
    __syncthreads();
    float r = part[0];
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        y[(size_t)blockIdx.x * cols + c] = __float2bfloat16(__bfloat162float(xr[c]) * r * __bfloat162float(w[c]));
}

// One block per row, the row staged in dynamic shared memory.
extern "C" __global__ void softmax_rows(const float* x, float* y, int cols) {
    extern __shared__ float row[];
    __shared__ float red[32];
    const float* xr = x + (size_t)blockIdx.x * cols;
    float m = -__int_as_float(0x7f800000);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        row[c] = __ldg(&xr[c]);
        m = fmaxf(m, row[c]);
    }
    m = warp_max(m);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = m;
    __syncthreads();
    m = red[0];
    for (int i = 1; i < (int)(blockDim.x >> 5); ++i) m = fmaxf(m, red[i]);
    __syncthreads();
    float s = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float e = __expf(row[c] - m);
        row[c] = e;
        s += e;
    }
    s = warp_sum(s);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = s;
    __syncthreads();
    s = 0.f;
    for (int i = 0; i < (int)(blockDim.x >> 5); ++i) s += red[i];
    float inv = 1.f / s;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) y[(size_t)blockIdx.x * cols + c] = row[c] * inv;
}

extern "C" __global__ void swiglu(const float* gate, const float* up, float* out, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float g = gate[i];
        out[i] = g / (1.f + expf(-g)) * up[i];
    }
}

extern "C" __global__ void adamw(float* p, const float* g, float* m, float* v, __nv_bfloat16* pb, int n,
                                 float lr, float b1, float b2, float eps, float wd, float bc1, float bc2) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float gi = g[i];
    float mi = b1 * m[i] + (1.f - b1) * gi;
    float vi = b2 * v[i] + (1.f - b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    float upd = (mi / bc1) / (sqrtf(vi / bc2) + eps);
    float pi = p[i] * (1.f - lr * wd) - lr * upd;
    p[i] = pi;
    pb[i] = __float2bfloat16_rn(pi);
}

// out[c][r] = in[r][c]; 32x32 tiles, blockDim (32, 8).
extern "C" __global__ void transpose(const float* in, float* out, int rows, int cols) {
    __shared__ float tile[32][33];
    int c = blockIdx.x * 32 + threadIdx.x;
    for (int j = threadIdx.y; j < 32; j += 8) {
        int r = blockIdx.y * 32 + j;
        if (r < rows && c < cols) tile[j][threadIdx.x] = in[(size_t)r * cols + c];
    }
    __syncthreads();
    int r = blockIdx.y * 32 + threadIdx.x;
    for (int j = threadIdx.y; j < 32; j += 8) {
        int cc = blockIdx.x * 32 + j;
        if (cc < cols && r < rows) out[(size_t)cc * rows + r] = tile[threadIdx.x][j];
    }
}

// hist[b] over keys: bucket = (popc(k) + clz(k) + (brev(k) & 7) + k / div + k % div) % nb.
extern "C" __global__ void histogram(const unsigned* keys, unsigned* hist, int n, unsigned div, int nb) {
    extern __shared__ unsigned sh[];
    for (int b = threadIdx.x; b < nb; b += blockDim.x) sh[b] = 0;
    __syncthreads();
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        unsigned k = keys[i];
        unsigned b = (__popc(k) + __clz(k) + (__brev(k) & 7u) + k / div + k % div) % (unsigned)nb;
        atomicAdd(&sh[b], 1u);
    }
    __syncthreads();
    for (int b = threadIdx.x; b < nb; b += blockDim.x) atomicAdd(&hist[b], sh[b]);
}

// Embedding-backward style scatter: grad[idx[i]][c] += dy[i][c].
extern "C" __global__ void scatter_add(const int* idx, const float* dy, float* grad, int n, int dim) {
    int i = blockIdx.x, c = threadIdx.x;
    if (i < n && c < dim) atomicAdd(&grad[(size_t)idx[i] * dim + c], dy[(size_t)i * dim + c]);
}
