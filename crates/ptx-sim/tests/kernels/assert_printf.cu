// Whole-kernel test of the call sequences NVRTC emits for assert(), printf() and
// __trap(): printf is accepted (output dropped), a failing assert and a trap stop
// the launch with an error that carries the assert's message, file and line.
extern "C" __global__ void checked_scale(const float* x, float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i == 0) printf("n=%d x0=%f\n", n, x[0]);
    if (n < 0) __trap();
    if (i < n) {
        assert(x[i] >= 0.f);
        y[i] = x[i] * 2.f;
    }
}
