// cast.cu: dtype conversions between fp32 and bf16 (round to nearest even, NaN stays NaN).
//
// Contract: dst[i] = convert(src[i]) for i < len. Used to move a buffer between the fp32 and bf16
// halves of the precision policy (weight gradients to fp32, a bf16 parameter's fp32 master copy,
// fp32 inputs of ops that require them). Launch: grid-stride, block 256.

extern "C" __global__ void cast_f32_to_bf16(bf16_t* dst, const float* src, long long len) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += (long long)gridDim.x * blockDim.x) {
        dst[i] = f32_to_bf16(src[i]);
    }
}

extern "C" __global__ void cast_bf16_to_f32(float* dst, const bf16_t* src, long long len) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += (long long)gridDim.x * blockDim.x) {
        dst[i] = bf16_to_f32(src[i]);
    }
}
