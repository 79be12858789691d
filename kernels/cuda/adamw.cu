// adamw.cu: one AdamW step per parameter tensor, as torch.optim.AdamW.
//
// Contract (kernels/src/backend.rs `adamw_step`): g = grad * grad_scale; m = b1*m + (1-b1)*g;
// v = b2*v + (1-b2)*g^2; p -= lr*wd*p; p -= lr * (m/(1-b1^t)) / (sqrt(v/(1-b2^t)) + eps).
// Grads, m and v are fp32. `adamw_step_f32` updates fp32 params in place. `adamw_step_bf16` is the
// mixed-precision step: it updates the fp32 master copy and writes the bf16 params the forward reads
// (params = bf16(master)), so small updates accumulate in fp32 and are never lost to bf16 rounding.
// Bias corrections (1-b1^t, 1-b2^t) are computed on the host in f64 and passed in.
// Launch: grid-stride, block 256. ZeRO-1 launches it on the rank's shard (a sub-range).

__device__ __forceinline__ float adamw_update(float p, float g, float* m, float* v, long long i, float lr,
                                              float b1, float b2, float eps, float wd, float bc1,
                                              float bc2) {
    float mi = b1 * m[i] + (1.0f - b1) * g;
    float vi = b2 * v[i] + (1.0f - b2) * g * g;
    m[i] = mi;
    v[i] = vi;
    p -= lr * wd * p;
    p -= lr * (mi / bc1) / (sqrtf(vi / bc2) + eps);
    return p;
}

extern "C" __global__ void adamw_step_f32(float* params, const float* grads, float* m, float* v, long long len,
                                          float lr, float b1, float b2, float eps, float wd, float bc1,
                                          float bc2, float grad_scale) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += (long long)gridDim.x * blockDim.x) {
        params[i] = adamw_update(params[i], grads[i] * grad_scale, m, v, i, lr, b1, b2, eps, wd, bc1, bc2);
    }
}

extern "C" __global__ void adamw_step_bf16(bf16_t* params, float* master, const float* grads, float* m,
                                           float* v, long long len, float lr, float b1, float b2, float eps,
                                           float wd, float bc1, float bc2, float grad_scale) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += (long long)gridDim.x * blockDim.x) {
        float p = adamw_update(master[i], grads[i] * grad_scale, m, v, i, lr, b1, b2, eps, wd, bc1, bc2);
        master[i] = p;
        params[i] = f32_to_bf16(p);
    }
}
