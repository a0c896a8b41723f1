// Shared device helpers for the appliance's kernels: warp and block sums.
// Kept header-only and force-inlined so every kernel's PTX is self-contained
// (no .func calls), which keeps the PTX interpreter's job simple.
#pragma once

#define APPLIANCE_INLINE __device__ __forceinline__

// Sum over the 32 lanes of a warp, result in every lane.
APPLIANCE_INLINE float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum over a block of up to 1024 threads (blockDim.x a multiple of 32),
// result in every thread. `scratch` holds at least 32 floats.
APPLIANCE_INLINE float block_sum(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    int warps = (blockDim.x + 31) >> 5;
    v = lane < warps ? scratch[lane] : 0.0f;
    return warp_sum(v);
}
