// residual.cu: the residual add and the in-place helpers around it.
//
// Contract (kernels/src/backend.rs `add_fwd`, `add_inplace`, `scale`):
// * add_fwd: out = a + b (all T). Its backward passes dout to both inputs, which the caller does with
//   add_inplace (acc += x).
// * add_inplace: acc += x; acc and x may differ in dtype (fp32 weight-gradient accumulators take bf16
//   or fp32 addends), hence the four stamps add_inplace_<acc>_<x>.
// * scale_inplace: x *= s (gradient clipping).
// Launch: grid-stride, block 256.

template <typename T>
__device__ void add_fwd_impl(T* out, const T* a, const T* b, long long len) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += (long long)gridDim.x * blockDim.x) {
        store(out, i, load(a, i) + load(b, i));
    }
}

template <typename A, typename X>
__device__ void add_inplace_impl(A* acc, const X* x, long long len) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += (long long)gridDim.x * blockDim.x) {
        store(acc, i, load(acc, i) + load(x, i));
    }
}

template <typename T>
__device__ void scale_impl(T* x, float s, long long len) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += (long long)gridDim.x * blockDim.x) {
        store(x, i, load(x, i) * s);
    }
}

#define STAMP(SUF, T)                                                                                  \
    extern "C" __global__ void add_fwd_##SUF(T* out, const T* a, const T* b, long long len) {          \
        add_fwd_impl<T>(out, a, b, len);                                                               \
    }                                                                                                  \
    extern "C" __global__ void scale_inplace_##SUF(T* x, float s, long long len) {                     \
        scale_impl<T>(x, s, len);                                                                      \
    }
STAMP_F32_BF16(STAMP)
#undef STAMP

extern "C" __global__ void add_inplace_f32_f32(float* acc, const float* x, long long len) {
    add_inplace_impl<float, float>(acc, x, len);
}
extern "C" __global__ void add_inplace_f32_bf16(float* acc, const bf16_t* x, long long len) {
    add_inplace_impl<float, bf16_t>(acc, x, len);
}
extern "C" __global__ void add_inplace_bf16_bf16(bf16_t* acc, const bf16_t* x, long long len) {
    add_inplace_impl<bf16_t, bf16_t>(acc, x, len);
}
extern "C" __global__ void add_inplace_bf16_f32(bf16_t* acc, const float* x, long long len) {
    add_inplace_impl<bf16_t, float>(acc, x, len);
}
