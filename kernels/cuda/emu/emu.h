// emu.h: a CPU emulator of the small part of the CUDA execution model our kernels use, so that the
// kernel sources in kernels/cuda can be compiled by a host C++ compiler and *run* on a machine
// without a GPU (kernels/tests/cuda_emu.rs drives it).
//
// Model: blocks run one after another; the threads of a block run as cooperative fibers (ucontext) on
// one OS thread, switching only at barriers, so the emulation is deterministic and cheap on a loaded
// machine. __syncthreads is a block barrier; __syncwarp and the shuffles use a per-warp barrier (the
// shuffles exchange values through double-buffered per-warp slots); `__shared__` variables are
// function-local statics (one live block at a time) and dynamic shared memory is a per-launch buffer
// filled with garbage. A thread that returns early drops out of its barriers, as an exited GPU thread
// does; a barrier that can never complete aborts with a message. Not modelled: the memory model
// beyond barriers, warp-synchronous code without __syncwarp, timing. It checks indexing, masking,
// reductions, barrier placement and the arithmetic of every kernel, not performance.
#pragma once
#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <math.h>  // expf, logf, powf, sqrtf, fmaxf in the global namespace, as in CUDA
#include <vector>

struct dim3 {
    unsigned int x = 1, y = 1, z = 1;
};

inline dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace emu {
struct Group {
    unsigned int live = 0, arrived = 0;
    uint64_t gen = 0;
};
struct Fiber {
    ucontext_t ctx;
    std::vector<char> stack;
    unsigned int tid = 0;
    uint64_t shuffles = 0;
    bool done = false;
};
inline ucontext_t sched_ctx;
inline Fiber* cur = nullptr;
inline Group block_group;
inline std::vector<Group> warp_groups;
inline std::vector<double> warp_slots;  // [warp][2][32]
inline std::vector<unsigned char> dyn_smem;
inline const std::function<void()>* kernel_fn = nullptr;
inline uint64_t switches = 0;

inline unsigned int lane() { return cur->tid & 31; }
inline unsigned int warp() { return cur->tid >> 5; }
inline void yield() {
    if (++switches > 4000000000ull) {
        std::fprintf(stderr, "emu: barrier never completes (deadlock)\n");
        std::abort();
    }
    swapcontext(&cur->ctx, &sched_ctx);
}
inline void release_if_complete(Group& g) {
    if (g.arrived > 0 && g.arrived >= g.live) {
        g.arrived = 0;
        g.gen++;
    }
}
inline void barrier(Group& g) {
    uint64_t my = g.gen;
    g.arrived++;
    release_if_complete(g);
    while (g.gen == my) yield();
}
inline void fiber_main() {
    (*kernel_fn)();
    cur->done = true;
    block_group.live--;
    release_if_complete(block_group);
    Group& w = warp_groups[warp()];
    w.live--;
    release_if_complete(w);
}  // returns to sched_ctx through uc_link
}  // namespace emu

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define DYNAMIC_SMEM(T, name) T* name = reinterpret_cast<T*>(emu::dyn_smem.data())

inline void __syncthreads() { emu::barrier(emu::block_group); }
inline void __syncwarp(unsigned int = 0xffffffffu) { emu::barrier(emu::warp_groups[emu::warp()]); }

template <typename T>
inline T emu_shfl(T v, int src) {
    unsigned int w = emu::warp();
    double* slots = &emu::warp_slots[(w * 2 + (emu::cur->shuffles++ & 1)) * 32];
    slots[emu::lane()] = static_cast<double>(v);
    emu::barrier(emu::warp_groups[w]);
    return static_cast<T>(slots[src & 31]);
}
template <typename T>
inline T __shfl_sync(unsigned int, T v, int src) { return emu_shfl(v, src); }
template <typename T>
inline T __shfl_xor_sync(unsigned int, T v, int mask) { return emu_shfl(v, (int)emu::lane() ^ mask); }

inline float __uint_as_float(unsigned int u) { float f; std::memcpy(&f, &u, 4); return f; }
inline float __int_as_float(int u) { float f; std::memcpy(&f, &u, 4); return f; }
inline unsigned int __float_as_uint(float f) { unsigned int u; std::memcpy(&u, &f, 4); return u; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline void sincosf(float a, float* s, float* c) { *s = std::sin(a); *c = std::cos(a); }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

namespace emu {
// Runs `kernel` (a callable that reads threadIdx & co.) on a grid.
inline void launch(dim3 grid, dim3 block, size_t smem_bytes, const std::function<void()>& kernel) {
    dyn_smem.assign(smem_bytes + 16, 0xAB);  // garbage-filled, as on a GPU
    kernel_fn = &kernel;
    const unsigned int nthreads = block.x * block.y * block.z;
    const unsigned int nwarps = (nthreads + 31) / 32;
    std::vector<Fiber> fibers(nthreads);
    for (unsigned int bz = 0; bz < grid.z; ++bz)
        for (unsigned int by = 0; by < grid.y; ++by)
            for (unsigned int bx = 0; bx < grid.x; ++bx) {
                block_group = Group{nthreads, 0, 0};
                warp_groups.assign(nwarps, Group{});
                for (unsigned int t = 0; t < nthreads; ++t) warp_groups[t / 32].live++;
                warp_slots.assign((size_t)nwarps * 64, 0.0);
                for (unsigned int t = 0; t < nthreads; ++t) {
                    Fiber& f = fibers[t];
                    f.tid = t;
                    f.done = false;
                    f.shuffles = 0;
                    f.stack.resize(128 * 1024);
                    getcontext(&f.ctx);
                    f.ctx.uc_stack.ss_sp = f.stack.data();
                    f.ctx.uc_stack.ss_size = f.stack.size();
                    f.ctx.uc_link = &sched_ctx;
                    makecontext(&f.ctx, fiber_main, 0);
                }
                blockIdx = dim3{bx, by, bz};
                blockDim = block;
                gridDim = grid;
                unsigned int remaining = nthreads;
                while (remaining > 0) {
                    for (unsigned int t = 0; t < nthreads; ++t) {
                        Fiber& f = fibers[t];
                        if (f.done) continue;
                        cur = &f;
                        threadIdx = dim3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
                        swapcontext(&sched_ctx, &f.ctx);
                        if (f.done) remaining--;
                    }
                }
            }
    cur = nullptr;
}
}  // namespace emu
