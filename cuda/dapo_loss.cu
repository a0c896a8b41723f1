// The fused DAPO policy loss: per token the ratio against the sampling
// log-prob, the asymmetric clip, the advantage and the mask; out come the
// per-token gradient coefficients d loss / d logp and the mini-batch's loss
// and clip counts.
//
// Design. It must equal train::algorithms::dapo_loss, which decides in f64
// which tokens are clipped; so each token is evaluated in f64 as there (one
// exp per token is nothing next to the log-prob kernels), with the same
// comparisons, the same NaN behaviour and the same division by N. The sums
// are deterministic without atomics: each block reduces a contiguous chunk
// (warp shuffles, then the warps in order) into partial[block], and one
// block sums the partials in a fixed order. stats = [loss, tokens clipped
// low, tokens clipped high, masked tokens], all f64 (counts exact to 2^53).
#include "common.cuh"

#define DAPO_THREADS 256

APPLIANCE_INLINE double dapo_warp_sum(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum of four values over the block (DAPO_THREADS threads), valid in thread 0.
APPLIANCE_INLINE void dapo_block_sum4(double* v, double (*scratch)[4]) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int k = 0; k < 4; ++k) v[k] = dapo_warp_sum(v[k]);
    if (lane == 0)
        for (int k = 0; k < 4; ++k) scratch[warp][k] = v[k];
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int k = 0; k < 4; ++k) {
            double s = 0.0;
            for (int w = 0; w < DAPO_THREADS / 32; ++w) s += scratch[w][k];
            v[k] = s;
        }
    }
}

// Tokens [blockIdx.x * chunk, +chunk) of n. eps_low_bits / eps_high_bits
// are the f64 bit patterns of ε_low and ε_high; norm is N (>= 1).
extern "C" __global__ void __launch_bounds__(DAPO_THREADS) dapo_loss_partial(
    float* coef, double* partial, const float* logp, const float* logp_old, const float* adv, const float* mask,
    long long n, long long chunk, long long eps_low_bits, long long eps_high_bits, long long norm) {
    __shared__ double scratch[DAPO_THREADS / 32][4];
    double lo = 1.0 - __longlong_as_double(eps_low_bits), hi = 1.0 + __longlong_as_double(eps_high_bits);
    double dn = (double)norm;
    long long start = (long long)blockIdx.x * chunk;
    long long end = start + chunk < n ? start + chunk : n;
    double acc[4] = {0.0, 0.0, 0.0, 0.0};  // Σ term, low, high, masked
    for (long long t = start + threadIdx.x; t < end; t += DAPO_THREADS) {
        float c = 0.0f;
        if (mask[t] != 0.0f) {
            double a = (double)adv[t];
            double rho = exp((double)logp[t] - (double)logp_old[t]);
            double unclipped = rho * a;
            double r = rho < lo ? lo : (rho > hi ? hi : rho);  // NaN stays NaN, as f64::clamp
            double clipped = r * a;
            acc[0] += fmin(unclipped, clipped);
            bool clip_low = a < 0.0 && rho < lo;
            bool clip_high = a > 0.0 && rho > hi;
            acc[1] += clip_low ? 1.0 : 0.0;
            acc[2] += clip_high ? 1.0 : 0.0;
            acc[3] += 1.0;
            if (!(clip_low || clip_high)) c = (float)(-unclipped / dn);
        }
        coef[t] = c;
    }
    dapo_block_sum4(acc, scratch);
    if (threadIdx.x == 0)
        for (int k = 0; k < 4; ++k) partial[(long long)blockIdx.x * 4 + k] = acc[k];
}

// One block: stats = [-Σ term / N, low, high, masked] from `blocks` partials.
extern "C" __global__ void __launch_bounds__(DAPO_THREADS) dapo_loss_finalize(double* stats, const double* partial, int blocks,
                                                                              long long norm) {
    __shared__ double scratch[DAPO_THREADS / 32][4];
    double acc[4] = {0.0, 0.0, 0.0, 0.0};
    for (int b = threadIdx.x; b < blocks; b += DAPO_THREADS)
        for (int k = 0; k < 4; ++k) acc[k] += partial[(long long)b * 4 + k];
    dapo_block_sum4(acc, scratch);
    if (threadIdx.x == 0) {
        stats[0] = -acc[0] / (double)norm;
        stats[1] = acc[1];
        stats[2] = acc[2];
        stats[3] = acc[3];
    }
}
