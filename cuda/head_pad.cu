// Head-dimension padding between the model's layout and the attention
// kernels'. The flash-attention kernels are built for head dims 64 and 128;
// a model with a smaller head dim (the embedded tiny model: 32) runs them on
// heads zero-padded to 64. Zero columns change no dot product (Q·Kᵀ), give
// zero output columns (P·V) and zero gradient columns, so padding is exact;
// the softmax scale stays 1/sqrt(real head dim), which the launcher passes.
// `pad_heads_bf16` is also the plain f32 -> bf16 cast of q/k/v when
// hd == hd_pad. Elementwise, grid-stride over the padded (or unpadded) output.
#include <cuda_bf16.h>
#include "common.cuh"

// out bf16 [rows, hd_pad] = in f32 [rows, hd], zero in columns >= hd.
extern "C" __global__ void pad_heads_bf16(__nv_bfloat16* out, const float* in, long long rows, int hd, int hd_pad) {
    long long n = rows * hd_pad;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        long long r = i / hd_pad;
        int c = (int)(i - r * hd_pad);
        out[i] = c < hd ? __float2bfloat16_rn(in[r * hd + c]) : __float2bfloat16_rn(0.0f);
    }
}

// out [rows, hd] = columns [0, hd) of in [rows, hd_pad], bf16 or f32.
template <typename T>
APPLIANCE_INLINE void unpad(T* out, const T* in, long long rows, int hd, int hd_pad) {
    long long n = rows * hd;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        long long r = i / hd;
        int c = (int)(i - r * hd);
        out[i] = in[r * hd_pad + c];
    }
}

extern "C" __global__ void unpad_heads_bf16(__nv_bfloat16* out, const __nv_bfloat16* in, long long rows, int hd, int hd_pad) {
    unpad(out, in, rows, hd, hd_pad);
}

extern "C" __global__ void unpad_heads_f32(float* out, const float* in, long long rows, int hd, int hd_pad) {
    unpad(out, in, rows, hd, hd_pad);
}
