// rope.cu: rotary position embedding (rotate-half, as Hugging Face LLaMA), in place.
//
// Contract (kernels/src/backend.rs `rope_fwd`/`rope_bwd`): x is [n, heads, head_dim]; for the pair
// (j, j + head_dim/2): inv_freq = theta^(-2j/head_dim), angle = positions[i] * inv_freq,
// x1' = x1*cos - x2*sin, x2' = x2*cos + x1*sin. The backward applies the transpose rotation (sin
// negated) to the gradient, in place. Positions are range-checked on the host (CudaIds).
// Launch: one thread per (row, head, pair): grid ceil(n*heads*half/256), block 256.

template <typename T>
__device__ void rope_impl(T* x, const unsigned int* positions, int n, int heads, int head_dim, float theta,
                          float sign) {
    int half = head_dim / 2;
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long total = (long long)n * heads * half;
    if (idx >= total) return;
    int j = (int)(idx % half);
    long long rh = idx / half;  // row * heads + head
    int i = (int)(rh / heads);
    float inv_freq = powf(theta, -2.0f * (float)j / (float)head_dim);
    float angle = (float)positions[i] * inv_freq;
    float s, c;
    sincosf(angle, &s, &c);
    s *= sign;
    long long base = rh * head_dim;
    float x1 = load(x, base + j);
    float x2 = load(x, base + j + half);
    store(x, base + j, x1 * c - x2 * s);
    store(x, base + j + half, x2 * c + x1 * s);
}

#define STAMP(SUF, T)                                                                                  \
    extern "C" __global__ void rope_fwd_##SUF(T* x, const unsigned int* positions, int n, int heads,   \
                                              int head_dim, float theta) {                            \
        rope_impl<T>(x, positions, n, heads, head_dim, theta, 1.0f);                                   \
    }                                                                                                  \
    extern "C" __global__ void rope_bwd_##SUF(T* dx, const unsigned int* positions, int n, int heads,  \
                                              int head_dim, float theta) {                            \
        rope_impl<T>(dx, positions, n, heads, head_dim, theta, -1.0f);                                 \
    }
STAMP_F32_BF16(STAMP)
#undef STAMP
