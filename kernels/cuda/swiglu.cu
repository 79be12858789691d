// swiglu.cu: SwiGLU gate, out = silu(gate) * up, silu(x) = x * sigmoid(x).
//
// Contract (kernels/src/backend.rs `swiglu_fwd`/`swiglu_bwd`): all tensors [len] in T.
// bwd (overwrites): dup = dout * silu(gate);
//                   dgate = dout * up * sigmoid(gate) * (1 + gate * (1 - sigmoid(gate))).
// Launch: grid-stride, block 256.

template <typename T>
__device__ void swiglu_fwd_impl(T* out, const T* gate, const T* up, long long len) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += (long long)gridDim.x * blockDim.x) {
        float g = load(gate, i);
        float sig = 1.0f / (1.0f + expf(-g));
        store(out, i, g * sig * load(up, i));
    }
}

template <typename T>
__device__ void swiglu_bwd_impl(T* dgate, T* dup, const T* dout, const T* gate, const T* up, long long len) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += (long long)gridDim.x * blockDim.x) {
        float g = load(gate, i), u = load(up, i), d = load(dout, i);
        float sig = 1.0f / (1.0f + expf(-g));
        store(dup, i, d * g * sig);
        store(dgate, i, d * u * sig * (1.0f + g * (1.0f - sig)));
    }
}

#define STAMP(SUF, T)                                                                                  \
    extern "C" __global__ void swiglu_fwd_##SUF(T* out, const T* gate, const T* up, long long len) {    \
        swiglu_fwd_impl<T>(out, gate, up, len);                                                        \
    }                                                                                                  \
    extern "C" __global__ void swiglu_bwd_##SUF(T* dgate, T* dup, const T* dout, const T* gate,        \
                                                const T* up, long long len) {                         \
        swiglu_bwd_impl<T>(dgate, dup, dout, gate, up, len);                                           \
    }
STAMP_F32_BF16(STAMP)
#undef STAMP
