// SwiGLU, a = silu(gate) * up, elementwise with a grid-stride loop. The
// backward recomputes the sigmoid instead of saving it.
#include "common.cuh"

APPLIANCE_INLINE float sigmoid(float x) { return 1.0f / (1.0f + __expf(-x)); }

extern "C" __global__ void swiglu_fwd(float* out, const float* gate, const float* up, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        float g = gate[i];
        out[i] = g * sigmoid(g) * up[i];
    }
}

extern "C" __global__ void swiglu_bwd(float* dgate, float* dup, const float* dout, const float* gate, const float* up, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        float g = gate[i], s = sigmoid(g), d = dout[i];
        dup[i] = d * g * s;
        dgate[i] = d * up[i] * (s + g * s * (1.0f - s));
    }
}
