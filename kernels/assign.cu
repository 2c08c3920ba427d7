// Fused argmin after the cuBLAS GEMM of fastvlad.codebook.assign (impl="cuda").
//
// The Python side computes cross = x @ centres.T (float32, cuBLAS) and c_sq = |c_j|^2. One warp
// per row i then computes
//   x_sq    = |x_i|^2                      (lanes stride over the D values, shuffle reduction)
//   d_j     = c_sq[j] - 2 * cross[i, j]    (in double, as the Numba kernel does: its literal 2.0
//                                            promotes the float32 operands to float64)
//   label_i = first j with the smallest d_j (strict < per lane over ascending j; ties across
//             lanes go to the lower j, so the result is the CPU's lowest-index argmin)
//   dist_i  = max(d_label + x_sq, 0)       (float32 on output)
// A row whose d_j are all NaN or +inf gets label 0 and dist +inf, like the CPU.
// Needs no CUDA include path: load.cuh is inlined by fastvlad.kernels.source().

#include "load.cuh"

template <typename T>
__device__ __forceinline__ void argmin_impl(
    const T* __restrict__ x,          // (m, D) contiguous: only for x_sq
    const float* __restrict__ cross,  // (m, k) contiguous
    const float* __restrict__ c_sq,   // (k,)
    int* __restrict__ labels, float* __restrict__ dist, int m, int D, int k) {
    const int lane = threadIdx.x & 31;
    const long long i = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (i >= m) return;  // whole warps leave together, so the full-mask shuffles below are safe

    float x_sq = 0.0f;
    const T* xi = x + i * D;
    for (int d = lane; d < D; d += 32) {
        const float v = load_f(xi + d);
        x_sq = fmaf(v, v, x_sq);
    }
    for (int off = 16; off > 0; off >>= 1) x_sq += __shfl_xor_sync(0xffffffffu, x_sq, off);

    const double inf = __longlong_as_double(0x7ff0000000000000LL);
    double best = inf;
    int arg = k;  // sentinel: "nothing strictly below +inf seen"; mapped to 0 below like the CPU's arg = 0
    const float* ci = cross + i * k;
    for (int j = lane; j < k; j += 32) {
        const double d = (double)c_sq[j] - 2.0 * (double)ci[j];
        if (d < best) {
            best = d;
            arg = j;
        }
    }
    for (int off = 16; off > 0; off >>= 1) {
        const double ob = __shfl_xor_sync(0xffffffffu, best, off);
        const int oa = __shfl_xor_sync(0xffffffffu, arg, off);
        if (ob < best || (ob == best && oa < arg)) {
            best = ob;
            arg = oa;
        }
    }
    if (lane == 0) {
        const double v = best + (double)x_sq;
        labels[i] = arg == k ? 0 : arg;
        dist[i] = (float)(v > 0.0 ? v : 0.0);
    }
}

#define ARGMIN_ARGS                                                                                   \
    const float *__restrict__ cross, const float *__restrict__ c_sq, int *__restrict__ labels,         \
        float *__restrict__ dist, int m, int D, int k

extern "C" __global__ void argmin_rows_f32(const float* __restrict__ x, ARGMIN_ARGS) {
    argmin_impl<float>(x, cross, c_sq, labels, dist, m, D, k);
}

extern "C" __global__ void argmin_rows_f16(const unsigned short* __restrict__ x, ARGMIN_ARGS) {
    argmin_impl<unsigned short>(x, cross, c_sq, labels, dist, m, D, k);
}
