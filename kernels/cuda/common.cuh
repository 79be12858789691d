// common.cuh: prepended by the registry (`koala_kernels::cuda::modules`) to every kernel file before
// NVRTC compiles it, so the kernels need no include path and no CUDA headers.
//
// Contract:
// * bf16 is carried as its raw bits (`bf16_t`, an unsigned short), converted with round-to-nearest-even
//   exactly as `half::bf16::from_f32` does on the host; every kernel computes in fp32.
// * `load`/`store` are overloaded on the element type, so one template body serves f32 and bf16.
// * Warp and block reductions use a fixed tree (xor shuffles, then warp 0 over the warp partials), so a
//   reduction gives bit-identical results from run to run; no kernel uses floating-point atomics.
typedef unsigned short bf16_t;

// Dynamic shared memory (a macro so that the CPU emulator in kernels/cuda/emu can provide it).
#ifndef DYNAMIC_SMEM
#define DYNAMIC_SMEM(T, name) extern __shared__ T name[]
#endif

#define FULL_MASK 0xffffffffu
#define NEG_INF (-__int_as_float(0x7f800000))

__device__ __forceinline__ float bf16_to_f32(bf16_t x) {
    return __uint_as_float(((unsigned int)x) << 16);
}

__device__ __forceinline__ bf16_t f32_to_bf16(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (bf16_t)((u >> 16) | 0x40u);  // quiet NaN
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16_t)(u >> 16);
}

__device__ __forceinline__ float load(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ float load(const bf16_t* p, long long i) { return bf16_to_f32(p[i]); }
__device__ __forceinline__ void store(float* p, long long i, float v) { p[i] = v; }
__device__ __forceinline__ void store(bf16_t* p, long long i, float v) { p[i] = f32_to_bf16(v); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ double warp_sum_d(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `scratch` holds 32 floats of shared memory; the call synchronises the block twice.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = (lane < nwarps) ? scratch[lane] : 0.0f;
    return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = (lane < nwarps) ? scratch[lane] : NEG_INF;
    return warp_max(v);
}

// Stamps `extern "C"` entry points `<name>_f32` and `<name>_bf16` from one template kernel body.
#define STAMP_F32_BF16(STAMP) STAMP(f32, float) STAMP(bf16, bf16_t)
