// Whole-kernel smoke test of the CUDA intrinsics NVRTC lowers to less common PTX:
// half2/bf16x2 math, float4 loads, fast-math and rounding intrinsics, 64-bit bit
// tricks (bfind, popc, clz, brev), 64-bit division, warp votes and width-limited
// shuffles, and atomics (int max, double add, half2/bf16x2 add, a CAS float-max
// loop). The test checks the values it can state exactly and that nothing is
// unsupported.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
extern "C" __global__ void intrinsics(const float4* x4, const __half2* h, const __nv_bfloat162* b2,
                                      const unsigned long long* u64, float* f_out, int* imax,
                                      unsigned* fmax_bits, double* dsum, __half2* hsum, __nv_bfloat162* bsum,
                                      long long* q_out, unsigned* bits_out, long long d) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    float4 v = x4[i];
    __half2 hh = __hfma2(h[i], h[i], __hadd2(h[i], h[i]));
    hh = __hmul2(hh, __hsub2(h[i], hh));
    __nv_bfloat162 bb = __hfma2(b2[i], b2[i], b2[i]);
    bb = __hmax2(bb, __float22bfloat162_rn(make_float2(v.x, v.y)));
    float f = __low2float(hh) + __high2float(hh) + __low2float(bb) + __bfloat162float(__hadd(bb.x, bb.y));
    f += __fdividef(v.x, v.y + 3.f) + __frcp_rn(v.z + 5.f) + __saturatef(v.w) + fminf(v.x, v.y) + copysignf(v.z, v.w);
    f += floorf(v.x) + roundf(v.y) + truncf(v.z) + ceilf(v.w) + rintf(v.x * 3.f);
    unsigned long long u = u64[i];
    bits_out[4 * i + 0] = __ffs(i);
    bits_out[4 * i + 1] = __popcll(u);
    bits_out[4 * i + 2] = __clzll(u);
    bits_out[4 * i + 3] = (unsigned)(__brevll(u) >> 40);
    q_out[2 * i] = (long long)u / (d + 1);
    q_out[2 * i + 1] = (long long)u % (d + 3);
    unsigned bal = __ballot_sync(0xffffffffu, v.x > 0.f);
    f += __popc(bal) + (__any_sync(0xffffffffu, v.y > 0.f) ? 1.f : 0.f) + (__all_sync(0xffffffffu, v.z > -2.f) ? 2.f : 0.f);
    f += __shfl_sync(0xffffffffu, f, 3, 8);
    f += __shfl_up_sync(0xffffffffu, f, 1, 16);
    __syncwarp();
    __threadfence();
    f += sqrtf(fabsf(f)) + __expf(-fabsf(f)) + __logf(fabsf(f) + 1.f) + __sinf(f) + __cosf(f) + tanhf(f) + exp2f(f * 0.01f) + log2f(fabsf(f) + 2.f);
    double dd = (double)f * 1.5 + (double)d;
    f += (float)(dd / 3.0) + (float)sqrt(dd * dd);
    f_out[i] = f;
    atomicMax(imax, i);
    atomicAdd(dsum, 1.0);
    atomicAdd(hsum, hh);
    atomicAdd(bsum, bb);
    unsigned old = *fmax_bits, assumed;
    do {
        assumed = old;
        old = atomicCAS(fmax_bits, assumed, __float_as_uint(fmaxf(__uint_as_float(assumed), f)));
    } while (assumed != old);
}
