// Host emulation of the few CUDA features fastvlad's kernels use -- a TESTING AID, not a GPU model.
//
// kernels/*.cu are compiled by g++ with this header force-included (see build.py), so the kernel
// bodies that run in CI are the very lines NVRTC compiles on a GPU (one textual substitution: the
// fp16 -> fp32 PTX instruction becomes emu_half). Execution model:
//   * one OS thread; blocks run one after another, warps of a block one after another;
//   * the 32 lanes of a warp are coroutines (ucontext) that the launcher resumes in lane order;
//     a lane runs until it reaches __shfl_xor_sync or returns. A shuffle completes only when all
//     32 lanes have reached the SAME shuffle (same offset): a lane that returned or diverged
//     fails the launch with a message (a Python exception in fakecupy), where a GPU would give
//     undefined results.
//   * dynamic shared memory is one array, filled with NaN before every block (garbage), and
//     device outputs start as NaN too (see fakecupy.empty), so unwritten cells show.
// What it cannot catch: data races and missing __syncthreads (threads never interleave except
// at shuffles), memory-model and atomics effects, out-of-bounds accesses that stay inside host
// allocations, timing, coalescing, occupancy and bank conflicts. Arithmetic is IEEE float/double
// as on the GPU; __fmul_rn and friends map to plain operators built with -ffp-contract=off.
#pragma once
#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>

struct dim3e {
    unsigned x = 1, y = 1, z = 1;
};
inline dim3e threadIdx, blockIdx, blockDim, gridDim;

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__
using std::min;

inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline double __longlong_as_double(long long v) {
    double d;
    std::memcpy(&d, &v, sizeof d);
    return d;
}

// IEEE half bits -> float, exact (what cvt.f32.f16 does).
inline float emu_half(unsigned short h) {
    const unsigned sign = (h >> 15) & 1u, exp = (h >> 10) & 31u, man = h & 1023u;
    float v;
    if (exp == 0) v = std::ldexp((float)man, -24);
    else if (exp == 31) v = man ? NAN : INFINITY;
    else v = std::ldexp((float)(man | 1024u), (int)exp - 25);
    return sign ? -v : v;
}

void emu_fail(const std::string& what);  // after EmuWarp: fails the launch (never returns)

// One warp: 32 lanes as coroutines, resumed by run() in lane order until all have returned.
struct EmuWarp {
    enum State { READY, AT_SHUFFLE, DONE, FAILED };
    static constexpr size_t STACK = 256 * 1024;
    ucontext_t scheduler{}, lanes[32]{};
    State state[32]{};
    int offset[32]{};
    unsigned long long slot[32]{};
    int lane = 0;
    bool in_lane = false;
    std::string error;
    unsigned first_thread = 0;
    std::function<void()> body;
    char* stacks = nullptr;

    EmuWarp() : stacks(static_cast<char*>(std::malloc(32 * STACK))) {}
    ~EmuWarp() {
        if (current() == this) current() = nullptr;
        std::free(stacks);
    }

    static EmuWarp*& current() {
        static EmuWarp* w = nullptr;
        return w;
    }
    static void entry() {
        EmuWarp& w = *current();
        w.body();
        w.state[w.lane] = DONE;  // uc_link returns to the scheduler
    }
    void resume(int l) {
        lane = l;
        threadIdx = {first_thread + (unsigned)l, 0, 0};
        in_lane = true;
        swapcontext(&scheduler, &lanes[l]);
        in_lane = false;
        if (state[l] == FAILED) throw std::runtime_error(error);  // the lane is abandoned
    }
    void yield() { swapcontext(&lanes[lane], &scheduler); }

    void run(unsigned first, const std::function<void()>& f) {
        current() = this;
        first_thread = first;
        body = f;
        for (int l = 0; l < 32; ++l) {
            getcontext(&lanes[l]);
            lanes[l].uc_stack.ss_sp = stacks + l * STACK;
            lanes[l].uc_stack.ss_size = STACK;
            lanes[l].uc_link = &scheduler;
            makecontext(&lanes[l], &EmuWarp::entry, 0);
            state[l] = READY;
        }
        for (;;) {
            for (int l = 0; l < 32; ++l)
                if (state[l] == READY) resume(l);
            int at = 0, done = 0;
            for (int l = 0; l < 32; ++l) at += state[l] == AT_SHUFFLE, done += state[l] == DONE;
            if (done == 32) return;
            if (done) throw std::runtime_error("__shfl_xor_sync reached by some lanes of a warp while others had returned");
            for (int l = 1; l < 32; ++l)
                if (offset[l] != offset[0]) throw std::runtime_error("lanes of a warp are at different __shfl_xor_sync calls");
            for (int l = 0; l < 32; ++l) state[l] = READY;
        }
    }

    template <class T>
    T exchange(T v, int off) {
        static_assert(sizeof(T) <= sizeof(unsigned long long));
        const int me = lane;
        std::memcpy(&slot[me], &v, sizeof(T));
        offset[me] = off;
        state[me] = AT_SHUFFLE;
        yield();  // every lane has written its slot
        T r;
        std::memcpy(&r, &slot[me ^ off], sizeof(T));
        offset[me] = -off - 1;  // a second barrier, so no lane overwrites a slot before all have read
        state[me] = AT_SHUFFLE;
        yield();
        return r;
    }
};

template <class T>
T __shfl_xor_sync(unsigned mask, T v, int off) {
    if (mask != 0xffffffffu) emu_fail("only full-warp shuffles are emulated");
    if (off <= 0 || off >= 32) emu_fail("shuffle offset outside 1..31");
    return EmuWarp::current()->exchange(v, off);
}

inline void emu_fail(const std::string& what) {
    EmuWarp* w = EmuWarp::current();
    const std::string where = " (block " + std::to_string(blockIdx.x) + "," + std::to_string(blockIdx.y) + "," +
                              std::to_string(blockIdx.z) + " thread " + std::to_string(threadIdx.x) + ")";
    if (w == nullptr || !w->in_lane) throw std::runtime_error(what + where);
    w->error = what + where;  // inside a lane: hand the failure to the scheduler, which throws
    w->state[w->lane] = EmuWarp::FAILED;
    w->yield();
    std::abort();  // unreachable: a failed lane is never resumed
}
