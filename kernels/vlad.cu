// VLAD residual sums (fastvlad.vlad.residual_sums, impl="cuda"):
//   out[i, j, d] = sum over the points s of image i with labels[i, s] == j of (x[i, s, d] - c[j, d]).
//
// Grid (n, ceil(D / blockDim.x), ceil(k / kc)); thread t of block (i, y, z) owns column
// d = y * blockDim.x + t for the centres j0 = z * kc .. j0 + kc - 1, and keeps their kc
// accumulators in shared memory (kc * blockDim.x floats, passed as the dynamic size; the host
// picks kc so that this stays within 48 KB, chunking over centres when k is large: a chunk's
// block skips points labelled outside it). Each (j, d) cell is touched by its one thread only,
// walking s in increasing order: no atomics, no barriers, and a deterministic float32
// summation order. x loads are coalesced along d; the label is one broadcast load per point;
// the centre row is re-read from L1/L2 (k * D floats, small).
// Labels outside [0, k) are ignored. load.cuh is inlined by fastvlad.kernels.source().

#include "load.cuh"

template <typename T>
__device__ __forceinline__ void residual_impl(
    const T* __restrict__ x,              // (n, S, D) contiguous
    const int* __restrict__ labels,       // (n, S) contiguous
    const float* __restrict__ centres,    // (k, D) contiguous
    float* __restrict__ out,              // (n, k, D) contiguous
    int S, int D, int k, int kc) {
    extern __shared__ float acc[];        // (kc, blockDim.x)
    const int tile = blockDim.x;
    const int t = threadIdx.x;
    const int d = blockIdx.y * tile + t;
    if (d >= D) return;  // no barriers below: each thread only touches its own column
    const long long i = blockIdx.x;
    const int j0 = blockIdx.z * kc;
    const int nj = min(kc, k - j0);
    for (int j = 0; j < nj; ++j) acc[j * tile + t] = 0.0f;

    const int* lab = labels + i * S;
    const T* xi = x + i * S * D + d;
    const float* cd = centres + (long long)j0 * D + d;
    int s = 0;
    // Four points per step: their loads are issued together (more bytes in flight for a
    // memory-bound loop); the additions stay in increasing s order.
    for (; s + 4 <= S; s += 4) {
        const int l0 = lab[s] - j0, l1 = lab[s + 1] - j0, l2 = lab[s + 2] - j0, l3 = lab[s + 3] - j0;
        const float v0 = load_f(xi + (long long)s * D), v1 = load_f(xi + (long long)(s + 1) * D);
        const float v2 = load_f(xi + (long long)(s + 2) * D), v3 = load_f(xi + (long long)(s + 3) * D);
        if ((unsigned)l0 < (unsigned)nj) acc[l0 * tile + t] += v0 - cd[(long long)l0 * D];
        if ((unsigned)l1 < (unsigned)nj) acc[l1 * tile + t] += v1 - cd[(long long)l1 * D];
        if ((unsigned)l2 < (unsigned)nj) acc[l2 * tile + t] += v2 - cd[(long long)l2 * D];
        if ((unsigned)l3 < (unsigned)nj) acc[l3 * tile + t] += v3 - cd[(long long)l3 * D];
    }
    for (; s < S; ++s) {
        const int l = lab[s] - j0;
        if ((unsigned)l < (unsigned)nj) acc[l * tile + t] += load_f(xi + (long long)s * D) - cd[(long long)l * D];
    }

    float* o = out + (i * k + j0) * D + d;
    for (int j = 0; j < nj; ++j) o[(long long)j * D] = acc[j * tile + t];
}

extern "C" __global__ void residual_sums_f32(const float* __restrict__ x, const int* __restrict__ labels,
                                             const float* __restrict__ centres, float* __restrict__ out,
                                             int S, int D, int k, int kc) {
    residual_impl<float>(x, labels, centres, out, S, D, k, kc);
}

extern "C" __global__ void residual_sums_f16(const unsigned short* __restrict__ x,
                                             const int* __restrict__ labels,
                                             const float* __restrict__ centres, float* __restrict__ out,
                                             int S, int D, int k, int kc) {
    residual_impl<unsigned short>(x, labels, centres, out, S, D, k, kc);
}
