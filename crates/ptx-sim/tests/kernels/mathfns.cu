// Whole-kernel test: the CUDA math library as NVRTC inlines it (sinf/cosf with the
// Payne-Hanek slow path that reads a module-scope constant table through local
// memory, expf, logf, powf, tanhf, erff, sqrtf, integer/float conversions).
extern "C" __global__ void mathfns(const float* x, float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = x[i];
    float s, c;
    sincosf(v, &s, &c);
    y[8 * i + 0] = s;
    y[8 * i + 1] = c;
    y[8 * i + 2] = expf(v * 0.01f);
    y[8 * i + 3] = logf(fabsf(v) + 1.0f);
    y[8 * i + 4] = powf(fabsf(v) * 0.001f + 0.5f, 1.7f);
    y[8 * i + 5] = tanhf(v * 0.01f);
    y[8 * i + 6] = erff(v * 0.001f);
    y[8 * i + 7] = (float)__float2int_rn(v * 0.5f) + rsqrtf(fabsf(v) + 1.0f);
}
