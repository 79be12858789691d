// cross_entropy.cu: fused softmax cross-entropy, forward and backward in one pass, in place.
//
// Contract (kernels/src/backend.rs `cross_entropy_fwd_bwd`): logits [n, v] in T are overwritten by
// dlogits = weights[i] * (softmax(logits[i]) - onehot(targets[i])); losses[i] (fp32) =
// logsumexp(logits[i]) - logits[i, targets[i]], written even when weights[i] = 0. No probability
// tensor is stored. Targets are range-checked on the host (CudaIds), weights are fp32.
// One block per row; the max and the sum of exponentials are block reductions with a fixed tree
// (deterministic). Launch: grid n, block 1024 (any multiple of 32 up to 1024 works).

template <typename T>
__device__ void cross_entropy_impl(T* logits, float* losses, const unsigned int* targets, const float* weights,
                                   int n, int v) {
    __shared__ float scratch[32];
    const int i = blockIdx.x;
    if (i >= n) return;  // block-uniform
    T* row = logits + (long long)i * v;
    float mx = NEG_INF;
    for (int j = threadIdx.x; j < v; j += blockDim.x) mx = fmaxf(mx, load(row, j));
    mx = block_max(mx, scratch);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < v; j += blockDim.x) sum += expf(load(row, j) - mx);
    sum = block_sum(sum, scratch);
    const float lse = mx + logf(sum);
    const unsigned int tgt = targets[i];
    const float w = weights[i];
    // Everyone reads the target logit before anyone overwrites the row.
    const float xt = load(row, tgt);
    __syncthreads();
    if (threadIdx.x == 0) losses[i] = lse - xt;
    const float inv = 1.0f / sum;
    for (int j = threadIdx.x; j < v; j += blockDim.x) {
        float p = expf(load(row, j) - mx) * inv;
        store(row, j, w * (p - ((unsigned int)j == tgt ? 1.0f : 0.0f)));
    }
}

#define STAMP(SUF, T)                                                                                  \
    extern "C" __global__ void cross_entropy_fwdbwd_##SUF(T* logits, float* losses,                    \
                                                         const unsigned int* targets,                 \
                                                         const float* weights, int n, int v) {        \
        cross_entropy_impl<T>(logits, losses, targets, weights, n, v);                                 \
    }
STAMP_F32_BF16(STAMP)
#undef STAMP
