// rmsnorm.cu: RMSNorm forward and backward.
//
// Contract (kernels/src/backend.rs `rmsnorm_fwd`/`rmsnorm_bwd`):
// * fwd: rstd[i] = 1/sqrt(mean(x[i,:]^2) + eps) (fp32, cached for the backward);
//   out[i,:] = x[i,:] * rstd[i] * w. x, out, w in T.
// * bwd: dx overwrites (T): dx = rstd * (w*dout - x * rstd^2 * mean(w*dout*x)).
//   dw (fp32) accumulates: dw[j] += sum_i dout[i,j] * x[i,j] * rstd[i], in two stages with a fixed
//   order (row chunks, then chunks in order; deterministic, no atomics).
// Launch: one warp per row, 8 rows per block (block 256); dw: grid (ceil(c/256), chunks), block 256,
// then dwsum: grid ceil(c/256), block 256.

template <typename T>
__device__ void rmsnorm_fwd_impl(T* out, float* rstd, const T* x, const T* w, int n, int c, float eps) {
    int lane = threadIdx.x & 31;
    int i = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (i >= n) return;
    const long long base = (long long)i * c;
    float ss = 0.0f;
    for (int j = lane; j < c; j += 32) {
        float v = load(x, base + j);
        ss += v * v;
    }
    ss = warp_sum(ss);
    float r = rsqrtf(ss / (float)c + eps);
    if (lane == 0) rstd[i] = r;
    for (int j = lane; j < c; j += 32) {
        store(out, base + j, load(x, base + j) * r * load(w, j));
    }
}

template <typename T>
__device__ void rmsnorm_bwd_dx_impl(T* dx, const T* dout, const T* x, const T* w, const float* rstd,
                                    int n, int c) {
    int lane = threadIdx.x & 31;
    int i = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (i >= n) return;
    const long long base = (long long)i * c;
    float r = rstd[i];
    float dot = 0.0f;
    for (int j = lane; j < c; j += 32) {
        dot += load(dout, base + j) * load(w, j) * load(x, base + j);
    }
    dot = warp_sum(dot) / (float)c;
    for (int j = lane; j < c; j += 32) {
        float g = load(dout, base + j) * load(w, j);
        store(dx, base + j, r * (g - load(x, base + j) * r * r * dot));
    }
}

// dw in two deterministic stages: rows are cut into gridDim.y chunks (a constant of the launcher, not
// of the device); `rmsnorm_bwd_dw_*` writes one fp32 partial per (chunk, column), then
// `rmsnorm_bwd_dwsum_f32` adds the chunks in order into dw (+=).
template <typename T>
__device__ void rmsnorm_bwd_dw_impl(float* partial, const T* dout, const T* x, const float* rstd, int n, int c) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= c) return;
    int rows_per = (n + gridDim.y - 1) / gridDim.y;
    int i0 = blockIdx.y * rows_per;
    int i1 = min(n, i0 + rows_per);
    float acc = 0.0f;
    for (int i = i0; i < i1; ++i) {
        long long o = (long long)i * c + j;
        acc += load(dout, o) * load(x, o) * rstd[i];
    }
    partial[(long long)blockIdx.y * c + j] = acc;
}

extern "C" __global__ void rmsnorm_bwd_dwsum_f32(float* dw, const float* partial, int chunks, int c) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= c) return;
    float acc = 0.0f;
    for (int k = 0; k < chunks; ++k) acc += partial[(long long)k * c + j];
    dw[j] += acc;
}

#define STAMP(SUF, T)                                                                                  \
    extern "C" __global__ void rmsnorm_fwd_##SUF(T* out, float* rstd, const T* x, const T* w, int n,   \
                                                 int c, float eps) {                                  \
        rmsnorm_fwd_impl<T>(out, rstd, x, w, n, c, eps);                                               \
    }                                                                                                  \
    extern "C" __global__ void rmsnorm_bwd_##SUF(T* dx, const T* dout, const T* x, const T* w,         \
                                                 const float* rstd, int n, int c) {                   \
        rmsnorm_bwd_dx_impl<T>(dx, dout, x, w, rstd, n, c);                                            \
    }                                                                                                  \
    extern "C" __global__ void rmsnorm_bwd_dw_##SUF(float* partial, const T* dout, const T* x,         \
                                                    const float* rstd, int n, int c) {                \
        rmsnorm_bwd_dw_impl<T>(partial, dout, x, rstd, n, c);                                          \
    }
STAMP_F32_BF16(STAMP)
#undef STAMP
