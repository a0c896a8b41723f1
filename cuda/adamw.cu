// AdamW on fp32 master weights, writing the bf16 copy the forward uses.
// Elementwise; the bias corrections are computed once on the host and passed
// in, so every element does the same few flops as the CPU reference.
#include <cuda_bf16.h>
#include "common.cuh"

extern "C" __global__ void adamw_step(float* master, __nv_bfloat16* param, const float* grad, float* m, float* v,
                                      long long n, float lr, float beta1, float beta2, float eps, float decay,
                                      float step_size, float bc2_sqrt) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        float p = master[i], g = grad[i];
        p -= decay * p;
        float mi = beta1 * m[i] + (1.0f - beta1) * g;
        float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        p -= step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
        m[i] = mi;
        v[i] = vi;
        master[i] = p;
        if (param) param[i] = __float2bfloat16_rn(p);
    }
}
