// bf16 <-> f32 casts, elementwise, round-to-nearest-even on the way down.
#include <cuda_bf16.h>
#include "common.cuh"

extern "C" __global__ void f32_to_bf16(__nv_bfloat16* out, const float* in, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        out[i] = __float2bfloat16_rn(in[i]);
}

extern "C" __global__ void bf16_to_f32(float* out, const __nv_bfloat16* in, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        out[i] = __bfloat162float(in[i]);
}
