// lora.cu: LoRA's input dropout (kernels/src/backend.rs `lora_fwd`, `lora_bwd`; the products are
// cuBLAS calls in the backend).
//
// Contract:
// * lora_dropout: out[i] = keep(seed, i, p) ? x[i] * inv : 0, with inv = 1 / (1 - p) rounded to
//   f32 on the host; out may be x (in place).
// * lora_dropout_add: acc[i] += keep(seed, i, p) ? g[i] * inv : 0 (the input gradient through the
//   same mask).
// keep() is `lora_keep` in kernels/src/backend.rs, bit for bit: SplitMix64 of (seed, i), its top
// 24 bits as a uniform in [0, 1), kept when u >= p. So the CPU reference draws the same mask, and
// the backward redraws the forward's instead of storing it.
// Launch: grid-stride, block 256.

__device__ __forceinline__ bool lora_keep(unsigned long long seed, unsigned long long i, float p) {
    unsigned long long z = seed + (i + 1ull) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (float)(z >> 40) * (1.0f / 16777216.0f) >= p;
}

template <typename T>
__device__ void lora_dropout_impl(T* out, const T* x, float p, float inv, unsigned long long seed,
                                  long long len) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += (long long)gridDim.x * blockDim.x) {
        store(out, i, lora_keep(seed, (unsigned long long)i, p) ? load(x, i) * inv : 0.0f);
    }
}

template <typename T>
__device__ void lora_dropout_add_impl(T* acc, const T* g, float p, float inv,
                                      unsigned long long seed, long long len) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += (long long)gridDim.x * blockDim.x) {
        if (lora_keep(seed, (unsigned long long)i, p)) {
            store(acc, i, load(acc, i) + load(g, i) * inv);
        }
    }
}

#define STAMP(SUF, T)                                                                              \
    extern "C" __global__ void lora_dropout_##SUF(T* out, const T* x, float p, float inv,          \
                                                  unsigned long long seed, long long len) {        \
        lora_dropout_impl<T>(out, x, p, inv, seed, len);                                           \
    }                                                                                              \
    extern "C" __global__ void lora_dropout_add_##SUF(T* acc, const T* g, float p, float inv,      \
                                                      unsigned long long seed, long long len) {    \
        lora_dropout_add_impl<T>(acc, g, p, inv, seed, len);                                       \
    }
STAMP_F32_BF16(STAMP)
#undef STAMP
