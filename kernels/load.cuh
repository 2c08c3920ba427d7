// Loads shared by every kernel: float32 as is, float16 (raw 16-bit words) widened with one PTX
// instruction (exact, like NumPy's float16 -> float32). fastvlad.kernels.source() inlines this
// file where a kernel includes it, so NVRTC needs no include path.

__device__ __forceinline__ float load_f(const float* p) { return *p; }

__device__ __forceinline__ float load_f(const unsigned short* p) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(*p));
    return f;
}
