// global_norm.cu: sum of squares of one buffer, for the global gradient norm and its clipping.
//
// Contract (kernels/src/backend.rs `sum_squares`): the result is sum(x^2) accumulated in f64 in a fixed
// order. Each block writes one f64 partial for a fixed grid-stride slice (the grid size is fixed by
// the launcher, not by the device), the host adds the partials in block order: bit-identical results
// from run to run. The global norm is sqrt of the sum over all gradient tensors (done by the caller).
// Launch: grid GN_BLOCKS (the launcher's constant), block 256, partials: [gridDim.x] f64.

template <typename T>
__device__ void global_norm_impl(double* partials, const T* x, long long len) {
    __shared__ double scratch[32];
    double acc = 0.0;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += (long long)gridDim.x * blockDim.x) {
        double v = (double)load(x, i);
        acc += v * v;
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    acc = warp_sum_d(acc);
    if (lane == 0) scratch[warp] = acc;
    __syncthreads();
    if (warp == 0) {
        acc = (lane < nwarps) ? scratch[lane] : 0.0;
        acc = warp_sum_d(acc);
        if (lane == 0) partials[blockIdx.x] = acc;
    }
}

#define STAMP(SUF, T)                                                                                  \
    extern "C" __global__ void global_norm_fwd_##SUF(double* partials, const T* x, long long len) {    \
        global_norm_impl<T>(partials, x, len);                                                         \
    }
STAMP_F32_BF16(STAMP)
#undef STAMP
