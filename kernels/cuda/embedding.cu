// embedding.cu: token embedding lookup, forward and backward.
//
// Contract (kernels/src/backend.rs `embedding_fwd`/`embedding_bwd`):
// * fwd: out[i, :] = table[ids[i], :]; out/table in T (f32 or bf16). Ids are range-checked on the
//   host when they are uploaded (CudaIds keeps their maximum), so the kernel never sees id >= vocab.
// * bwd: dtable[ids[i], :] += dout[i, :]; dtable is always fp32 (weight gradients are fp32 under the
//   bf16 policy). One thread owns one channel and walks the tokens in order, so the sum order is the
//   token order, as on the CPU, and no atomics are needed (deterministic).
// Launch: fwd grid (n, ceil(c/256)), block 256. bwd grid ceil(c/256), block 256.

template <typename T>
__device__ void embedding_fwd_impl(T* out, const unsigned int* ids, const T* table, int n, int c) {
    int i = blockIdx.x;
    int j = blockIdx.y * blockDim.x + threadIdx.x;
    if (i >= n || j >= c) return;
    long long row = (long long)ids[i];
    out[(long long)i * c + j] = table[row * c + j];
}

template <typename T>
__device__ void embedding_bwd_impl(float* dtable, const T* dout, const unsigned int* ids, int n, int c) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= c) return;
    for (int i = 0; i < n; ++i) {
        long long row = (long long)ids[i];
        dtable[row * c + j] += load(dout, (long long)i * c + j);
    }
}

#define STAMP(SUF, T)                                                                                 \
    extern "C" __global__ void embedding_fwd_##SUF(T* out, const unsigned int* ids, const T* table,   \
                                                   int n, int c) {                                   \
        embedding_fwd_impl<T>(out, ids, table, n, c);                                                 \
    }                                                                                                 \
    extern "C" __global__ void embedding_bwd_##SUF(float* dtable, const T* dout,                      \
                                                   const unsigned int* ids, int n, int c) {          \
        embedding_bwd_impl<T>(dtable, dout, ids, n, c);                                               \
    }
STAMP_F32_BF16(STAMP)
#undef STAMP
