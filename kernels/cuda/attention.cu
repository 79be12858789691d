// attention.cu: causal self-attention with grouped-query heads and a segment (packing) mask,
// tiled flash-style: the score matrix is never stored; the forward saves the log-sum-exp per row.
//
// Contract (kernels/src/backend.rs `attention_fwd`/`attention_bwd`):
// * q: [b, t, n_heads, hd], k, v: [b, t, n_kv_heads, hd], out: [b, t, n_heads, hd] (all T);
//   segment_ids: [b*t]; lse: [b, n_heads, t] (fp32). Query (bi, i) sees key (bi, j) iff j <= i and
//   segment_ids[bi*t+j] == segment_ids[bi*t+i]; scores are scaled by 1/sqrt(hd); query head h reads
//   kv head h / (n_heads / n_kv_heads). The diagonal is always visible, so no row is empty.
// * The backward recomputes the probabilities from q, k and lse, in three kernels and no atomics
//   (deterministic): `attention_bwd_delta` (delta[i] = dout[i]·out[i]), `attention_bwd_dq` (one warp
//   per query row, loops over key tiles) and `attention_bwd_dkv` (one warp per key row, loops over the
//   query heads of its group and the query tiles). dq, dk, dv overwrite.
// * hd <= ATT_MAX_HD (128); the launcher checks it. Shared memory stays under the 48 KiB that needs no
//   opt-in (35 KiB at hd = 128).
// Launch (fwd, dq): grid (ceil(t/ATT_WARPS), b*n_heads), block 32*ATT_WARPS, dynamic shared memory
// attention_smem_bytes(hd) as computed by the launcher. dkv: grid (ceil(t/ATT_WARPS), b*n_kv_heads).
// delta: grid ceil(b*t*n_heads/ATT_WARPS), block 32*ATT_WARPS.

#define ATT_WARPS 4
#define ATT_TILE 32
#define ATT_MAX_HD 128
#define ATT_REG (ATT_MAX_HD / 32)

// Forward. Each warp owns one query row; the block's warps share each K/V tile in shared memory.
// Lane l scores key k0+l of the tile; then every lane accumulates its own channels d = l + 32r.
template <typename T>
__device__ void attention_fwd_impl(T* out, float* lse, const T* q, const T* k, const T* v,
                                   const unsigned int* seg, int B, int Tt, int NH, int NKV, int HD) {
    DYNAMIC_SMEM(float, smem);
    const int stride = HD + 1;  // padded rows: lanes read different rows without bank conflicts
    float* Ks = smem;
    float* Vs = Ks + ATT_TILE * stride;
    float* Qs = Vs + ATT_TILE * stride;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int bi = blockIdx.y / NH, h = blockIdx.y % NH, kh = h / (NH / NKV);
    const int q0 = blockIdx.x * ATT_WARPS;
    const int i = q0 + warp;
    const bool active = i < Tt;
    const float scale = rsqrtf((float)HD);
    float* qrow = Qs + warp * HD;
    unsigned int segi = 0;
    if (active) {
        const long long qoff = ((long long)(bi * Tt + i) * NH + h) * HD;
        for (int d = lane; d < HD; d += 32) qrow[d] = load(q, qoff + d) * scale;
        segi = seg[bi * Tt + i];
    }
    __syncwarp();
    float m = NEG_INF, l = 0.0f;
    float acc[ATT_REG];
#pragma unroll
    for (int r = 0; r < ATT_REG; ++r) acc[r] = 0.0f;
    const int last = min(q0 + ATT_WARPS, Tt) - 1;
    for (int k0 = 0; k0 <= last; k0 += ATT_TILE) {
        __syncthreads();
        for (int idx = threadIdx.x; idx < ATT_TILE * HD; idx += blockDim.x) {
            int r = idx / HD, d = idx % HD, j = k0 + r;
            float kv = 0.0f, vv = 0.0f;
            if (j < Tt) {
                long long off = ((long long)(bi * Tt + j) * NKV + kh) * HD + d;
                kv = load(k, off);
                vv = load(v, off);
            }
            Ks[r * stride + d] = kv;
            Vs[r * stride + d] = vv;
        }
        __syncthreads();
        if (active) {  // warp-uniform
            const int j = k0 + lane;
            float s = NEG_INF;
            if (j <= i && seg[bi * Tt + j] == segi) {
                float dot = 0.0f;
                for (int d = 0; d < HD; ++d) dot += qrow[d] * Ks[lane * stride + d];
                s = dot;
            }
            const float mnew = fmaxf(m, warp_max(s));
            if (mnew != NEG_INF) {  // warp-uniform: some key of this or an earlier tile is visible
                const float p = (s == NEG_INF) ? 0.0f : expf(s - mnew);
                const float corr = (m == NEG_INF) ? 0.0f : expf(m - mnew);
                l = l * corr + warp_sum(p);
#pragma unroll
                for (int r = 0; r < ATT_REG; ++r) acc[r] *= corr;
                for (int jj = 0; jj < ATT_TILE; ++jj) {
                    const float pj = __shfl_sync(FULL_MASK, p, jj);
#pragma unroll
                    for (int r = 0; r < ATT_REG; ++r) {
                        const int d = lane + 32 * r;
                        if (d < HD) acc[r] += pj * Vs[jj * stride + d];
                    }
                }
                m = mnew;
            }
        }
    }
    if (active) {
        const float inv = 1.0f / l;
        const long long ooff = ((long long)(bi * Tt + i) * NH + h) * HD;
#pragma unroll
        for (int r = 0; r < ATT_REG; ++r) {
            const int d = lane + 32 * r;
            if (d < HD) store(out, ooff + d, acc[r] * inv);
        }
        if (lane == 0) lse[((long long)bi * NH + h) * Tt + i] = m + logf(l);
    }
}

// delta[(bi*NH + h)*T + i] = sum_d dout[bi,i,h,d] * out[bi,i,h,d]; one warp per (row, head).
template <typename T>
__device__ void attention_bwd_delta_impl(float* delta, const T* dout, const T* out, int B, int Tt, int NH,
                                         int HD) {
    const int lane = threadIdx.x & 31;
    const long long w = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (w >= (long long)B * Tt * NH) return;
    const int h = (int)(w % NH);
    const long long row = w / NH;  // bi*T + i
    const int bi = (int)(row / Tt), i = (int)(row % Tt);
    const long long off = w * HD;
    float s = 0.0f;
    for (int d = lane; d < HD; d += 32) s += load(dout, off + d) * load(out, off + d);
    s = warp_sum(s);
    if (lane == 0) delta[((long long)bi * NH + h) * Tt + i] = s;
}

// dq: one warp per query row (as the forward), dq[i] = scale * sum_j p_ij (dp_ij - delta_i) k_j.
template <typename T>
__device__ void attention_bwd_dq_impl(T* dq, const T* dout, const T* q, const T* k, const T* v,
                                      const float* lse, const float* delta, const unsigned int* seg, int B,
                                      int Tt, int NH, int NKV, int HD) {
    DYNAMIC_SMEM(float, smem);
    const int stride = HD + 1;
    float* Ks = smem;
    float* Vs = Ks + ATT_TILE * stride;
    float* Qs = Vs + ATT_TILE * stride;
    float* dOs = Qs + ATT_WARPS * HD;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int bi = blockIdx.y / NH, h = blockIdx.y % NH, kh = h / (NH / NKV);
    const int q0 = blockIdx.x * ATT_WARPS;
    const int i = q0 + warp;
    const bool active = i < Tt;
    const float scale = rsqrtf((float)HD);
    float* qrow = Qs + warp * HD;
    float* dorow = dOs + warp * HD;
    unsigned int segi = 0;
    float lse_i = 0.0f, delta_i = 0.0f;
    if (active) {
        const long long qoff = ((long long)(bi * Tt + i) * NH + h) * HD;
        for (int d = lane; d < HD; d += 32) {
            qrow[d] = load(q, qoff + d) * scale;
            dorow[d] = load(dout, qoff + d);
        }
        segi = seg[bi * Tt + i];
        lse_i = lse[((long long)bi * NH + h) * Tt + i];
        delta_i = delta[((long long)bi * NH + h) * Tt + i];
    }
    __syncwarp();
    float acc[ATT_REG];
#pragma unroll
    for (int r = 0; r < ATT_REG; ++r) acc[r] = 0.0f;
    const int last = min(q0 + ATT_WARPS, Tt) - 1;
    for (int k0 = 0; k0 <= last; k0 += ATT_TILE) {
        __syncthreads();
        for (int idx = threadIdx.x; idx < ATT_TILE * HD; idx += blockDim.x) {
            int r = idx / HD, d = idx % HD, j = k0 + r;
            float kv = 0.0f, vv = 0.0f;
            if (j < Tt) {
                long long off = ((long long)(bi * Tt + j) * NKV + kh) * HD + d;
                kv = load(k, off);
                vv = load(v, off);
            }
            Ks[r * stride + d] = kv;
            Vs[r * stride + d] = vv;
        }
        __syncthreads();
        if (active) {
            const int j = k0 + lane;
            float ds = 0.0f;
            if (j <= i && seg[bi * Tt + j] == segi) {
                float s = 0.0f, dp = 0.0f;
                for (int d = 0; d < HD; ++d) {
                    s += qrow[d] * Ks[lane * stride + d];
                    dp += dorow[d] * Vs[lane * stride + d];
                }
                const float p = expf(s - lse_i);
                ds = p * (dp - delta_i);
            }
            for (int jj = 0; jj < ATT_TILE; ++jj) {
                const float dsj = __shfl_sync(FULL_MASK, ds, jj);
#pragma unroll
                for (int r = 0; r < ATT_REG; ++r) {
                    const int d = lane + 32 * r;
                    if (d < HD) acc[r] += dsj * Ks[jj * stride + d];
                }
            }
        }
    }
    if (active) {
        const long long qoff = ((long long)(bi * Tt + i) * NH + h) * HD;
#pragma unroll
        for (int r = 0; r < ATT_REG; ++r) {
            const int d = lane + 32 * r;
            if (d < HD) store(dq, qoff + d, acc[r] * scale);
        }
    }
}

// dk, dv: one warp per key row j of kv head kh; loops over the G query heads of the group and over the
// query tiles from the block's first key row to the end. Lane l handles query i0+l of the tile:
// dv_j += sum_i p_ij dout_i; dk_j += sum_i ds_ij (scale q_i).
template <typename T>
__device__ void attention_bwd_dkv_impl(T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v,
                                       const float* lse, const float* delta, const unsigned int* seg, int B,
                                       int Tt, int NH, int NKV, int HD) {
    DYNAMIC_SMEM(float, smem);
    const int stride = HD + 1;
    float* Qs = smem;
    float* dOs = Qs + ATT_TILE * stride;
    float* Kr = dOs + ATT_TILE * stride;
    float* Vr = Kr + ATT_WARPS * HD;
    float* Ls = Vr + ATT_WARPS * HD;
    float* Ds = Ls + ATT_TILE;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int bi = blockIdx.y / NKV, kh = blockIdx.y % NKV;
    const int G = NH / NKV;
    const int j0 = blockIdx.x * ATT_WARPS;
    const int j = j0 + warp;
    const bool active = j < Tt;
    const float scale = rsqrtf((float)HD);
    float* krow = Kr + warp * HD;
    float* vrow = Vr + warp * HD;
    unsigned int segj = 0;
    if (active) {
        const long long koff = ((long long)(bi * Tt + j) * NKV + kh) * HD;
        for (int d = lane; d < HD; d += 32) {
            krow[d] = load(k, koff + d);
            vrow[d] = load(v, koff + d);
        }
        segj = seg[bi * Tt + j];
    }
    __syncwarp();
    float dka[ATT_REG], dva[ATT_REG];
#pragma unroll
    for (int r = 0; r < ATT_REG; ++r) {
        dka[r] = 0.0f;
        dva[r] = 0.0f;
    }
    const int first_tile = (j0 / ATT_TILE) * ATT_TILE;
    for (int g = 0; g < G; ++g) {
        const int h = kh * G + g;
        for (int i0 = first_tile; i0 < Tt; i0 += ATT_TILE) {
            __syncthreads();
            for (int idx = threadIdx.x; idx < ATT_TILE * HD; idx += blockDim.x) {
                int r = idx / HD, d = idx % HD, i = i0 + r;
                float qv = 0.0f, dov = 0.0f;
                if (i < Tt) {
                    long long off = ((long long)(bi * Tt + i) * NH + h) * HD + d;
                    qv = load(q, off) * scale;
                    dov = load(dout, off);
                }
                Qs[r * stride + d] = qv;
                dOs[r * stride + d] = dov;
            }
            for (int r = threadIdx.x; r < ATT_TILE; r += blockDim.x) {
                int i = i0 + r;
                long long o = ((long long)bi * NH + h) * Tt + i;
                Ls[r] = (i < Tt) ? lse[o] : 0.0f;
                Ds[r] = (i < Tt) ? delta[o] : 0.0f;
            }
            __syncthreads();
            if (active) {
                const int i = i0 + lane;
                float p = 0.0f, ds = 0.0f;
                if (i < Tt && i >= j && seg[bi * Tt + i] == segj) {
                    float s = 0.0f, dp = 0.0f;
                    for (int d = 0; d < HD; ++d) {
                        s += Qs[lane * stride + d] * krow[d];
                        dp += dOs[lane * stride + d] * vrow[d];
                    }
                    p = expf(s - Ls[lane]);
                    ds = p * (dp - Ds[lane]);
                }
                for (int ii = 0; ii < ATT_TILE; ++ii) {
                    const float pi = __shfl_sync(FULL_MASK, p, ii);
                    const float dsi = __shfl_sync(FULL_MASK, ds, ii);
#pragma unroll
                    for (int r = 0; r < ATT_REG; ++r) {
                        const int d = lane + 32 * r;
                        if (d < HD) {
                            dva[r] += pi * dOs[ii * stride + d];
                            dka[r] += dsi * Qs[ii * stride + d];
                        }
                    }
                }
            }
        }
    }
    if (active) {
        const long long koff = ((long long)(bi * Tt + j) * NKV + kh) * HD;
#pragma unroll
        for (int r = 0; r < ATT_REG; ++r) {
            const int d = lane + 32 * r;
            if (d < HD) {
                store(dk, koff + d, dka[r]);
                store(dv, koff + d, dva[r]);
            }
        }
    }
}

#define STAMP(SUF, T)                                                                                    \
    extern "C" __global__ void attention_fwd_##SUF(T* out, float* lse, const T* q, const T* k,           \
                                                   const T* v, const unsigned int* seg, int B, int Tt,   \
                                                   int NH, int NKV, int HD) {                            \
        attention_fwd_impl<T>(out, lse, q, k, v, seg, B, Tt, NH, NKV, HD);                               \
    }                                                                                                    \
    extern "C" __global__ void attention_bwd_delta_##SUF(float* delta, const T* dout, const T* out,      \
                                                         int B, int Tt, int NH, int HD) {                \
        attention_bwd_delta_impl<T>(delta, dout, out, B, Tt, NH, HD);                                    \
    }                                                                                                    \
    extern "C" __global__ void attention_bwd_dq_##SUF(T* dq, const T* dout, const T* q, const T* k,      \
                                                      const T* v, const float* lse, const float* delta,  \
                                                      const unsigned int* seg, int B, int Tt, int NH,    \
                                                      int NKV, int HD) {                                 \
        attention_bwd_dq_impl<T>(dq, dout, q, k, v, lse, delta, seg, B, Tt, NH, NKV, HD);                \
    }                                                                                                    \
    extern "C" __global__ void attention_bwd_dkv_##SUF(T* dk, T* dv, const T* dout, const T* q,          \
                                                       const T* k, const T* v, const float* lse,         \
                                                       const float* delta, const unsigned int* seg,      \
                                                       int B, int Tt, int NH, int NKV, int HD) {         \
        attention_bwd_dkv_impl<T>(dk, dv, dout, q, k, v, lse, delta, seg, B, Tt, NH, NKV, HD);           \
    }
STAMP_F32_BF16(STAMP)
#undef STAMP
