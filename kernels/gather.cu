// Bilinear gather of one channels-last tap at sampled points (fastvlad.hypercolumn.gather, impl="cuda").
//
// One warp per point, its lanes striding over the channels, so each of the four neighbour reads
// is C contiguous values: coalesced. fp16 values arrive as raw 16-bit words and are widened with
// one PTX instruction (exact, like NumPy's float16 -> float32).
//
// Rounding: every product and sum goes through __fmul_rn / __fadd_rn / __fsub_rn. These are
// never contracted into FMAs, whatever -fmad says, so the result is bit-identical to the Numba
// and NumPy kernels, which evaluate
//   (1-wy) * ((1-wx)*t[y0,x0] + wx*t[y0,x1]) + wy * ((1-wx)*t[y1,x0] + wx*t[y1,x1])
// in float32 in exactly this order.

#include "load.cuh"

template <typename T>
__device__ __forceinline__ void gather_impl(
    const T* __restrict__ tap,           // (n, h, w, C) contiguous
    const int* __restrict__ points,      // (n, S, 2) contiguous, [row, col]
    const int* __restrict__ ylo, const int* __restrict__ yhi, const float* __restrict__ wyt,
    const int* __restrict__ xlo, const int* __restrict__ xhi, const float* __restrict__ wxt,
    float* __restrict__ out,             // element (i, s, ch) at out[i*stride_n + s*stride_s + ch]
    int n, int S, int h, int w, int C, long long stride_n, long long stride_s) {
    const int lane = threadIdx.x & 31;
    const long long p = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (p >= (long long)n * S) return;  // whole warps leave together: no barrier below
    const long long i = p / S;
    const long long s = p - i * S;
    const int r = points[2 * p];
    const int c = points[2 * p + 1];
    const float wy = wyt[r], wx = wxt[c];
    const float one_wy = __fsub_rn(1.0f, wy), one_wx = __fsub_rn(1.0f, wx);
    const long long row = (long long)w * C;
    const T* img = tap + i * h * row;
    const T* p00 = img + ylo[r] * row + (long long)xlo[c] * C;
    const T* p01 = img + ylo[r] * row + (long long)xhi[c] * C;
    const T* p10 = img + yhi[r] * row + (long long)xlo[c] * C;
    const T* p11 = img + yhi[r] * row + (long long)xhi[c] * C;
    float* dst = out + i * stride_n + s * stride_s;
    // A zero weight makes its term exactly 0 and its partner's factor exactly 1, so the neighbours
    // it multiplies are not read (as in the Numba kernel; no finite result changes, only the sign
    // of a zero). The branch is per point, so uniform across the warp.
    if (wy == 0.0f && wx == 0.0f) {
        for (int ch = lane; ch < C; ch += 32) dst[ch] = load_f(p00 + ch);
    } else if (wy == 0.0f) {
        for (int ch = lane; ch < C; ch += 32)
            dst[ch] = __fadd_rn(__fmul_rn(one_wx, load_f(p00 + ch)), __fmul_rn(wx, load_f(p01 + ch)));
    } else if (wx == 0.0f) {
        for (int ch = lane; ch < C; ch += 32)
            dst[ch] = __fadd_rn(__fmul_rn(one_wy, load_f(p00 + ch)), __fmul_rn(wy, load_f(p10 + ch)));
    } else {
        for (int ch = lane; ch < C; ch += 32) {
            const float top = __fadd_rn(__fmul_rn(one_wx, load_f(p00 + ch)), __fmul_rn(wx, load_f(p01 + ch)));
            const float bottom = __fadd_rn(__fmul_rn(one_wx, load_f(p10 + ch)), __fmul_rn(wx, load_f(p11 + ch)));
            dst[ch] = __fadd_rn(__fmul_rn(one_wy, top), __fmul_rn(wy, bottom));
        }
    }
}

#define GATHER_ARGS                                                                                  \
    const int *__restrict__ points, const int *__restrict__ ylo, const int *__restrict__ yhi,        \
        const float *__restrict__ wyt, const int *__restrict__ xlo, const int *__restrict__ xhi,     \
        const float *__restrict__ wxt, float *__restrict__ out, int n, int S, int h, int w, int C,   \
        long long stride_n, long long stride_s
#define GATHER_PASS points, ylo, yhi, wyt, xlo, xhi, wxt, out, n, S, h, w, C, stride_n, stride_s

extern "C" __global__ void gather_f32(const float* __restrict__ tap, GATHER_ARGS) {
    gather_impl<float>(tap, GATHER_PASS);
}

extern "C" __global__ void gather_f16(const unsigned short* __restrict__ tap, GATHER_ARGS) {
    gather_impl<unsigned short>(tap, GATHER_PASS);
}
