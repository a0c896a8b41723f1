// Whole-kernel test: f32 -> bf16 (round to nearest even) -> f32 round trip, plus a packed
// bf16x2 scale, exercising cvt.rn.bf16.f32, bf16 unpacking and bf16x2 math.
#include <cuda_bf16.h>
extern "C" __global__ void f32_to_bf16(const float* x, __nv_bfloat16* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = __float2bfloat16_rn(x[i]);
}
extern "C" __global__ void bf16_to_f32(const __nv_bfloat16* x, float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = __bfloat162float(x[i]);
}
extern "C" __global__ void bf16x2_fma(const __nv_bfloat162* x, __nv_bfloat162* y, float s, int n2) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n2) {
        __nv_bfloat162 sc = __float2bfloat162_rn(s);
        y[i] = __hfma2(x[i], sc, y[i]);
    }
}
