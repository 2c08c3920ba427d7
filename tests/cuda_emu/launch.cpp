// Launchers of the emulated kernels, called through ctypes by fakecupy.py: emu_<kernel>(grid, block,
// dynamic shared bytes, kernel arguments...). See emu.h for the execution model and its limits.
#include "emu.h"

extern "C" {
void gather_f32(const float*, const int*, const int*, const int*, const float*, const int*, const int*,
                const float*, float*, int, int, int, int, int, long long, long long);
void gather_f16(const unsigned short*, const int*, const int*, const int*, const float*, const int*,
                const int*, const float*, float*, int, int, int, int, int, long long, long long);
void argmin_rows_f32(const float*, const float*, const float*, int*, float*, int, int, int);
void argmin_rows_f16(const unsigned short*, const float*, const float*, int*, float*, int, int, int);
void residual_sums_f32(const float*, const int*, const float*, float*, int, int, int, int);
void residual_sums_f16(const unsigned short*, const int*, const float*, float*, int, int, int, int);
}

constexpr int SHARED_FLOATS = 48 * 1024 / 4;
float acc[SHARED_FLOATS];  // the dynamic shared memory (`extern __shared__ float acc[]` in vlad.cu)

static std::string last_error;

// Runs the grid; returns 0, or 1 with the reason in emu_last_error().
template <class F>
static int launch(dim3e g, dim3e b, int shared, F f) try {
    if (b.x == 0 || b.x > 1024 || b.x % 32 || b.y != 1 || b.z != 1 || g.x == 0 || g.y == 0 || g.z == 0 ||
        g.y > 65535 || g.z > 65535 || shared < 0 || shared > SHARED_FLOATS * 4)
        throw std::runtime_error("bad launch: grid (" + std::to_string(g.x) + "," + std::to_string(g.y) + "," +
                                 std::to_string(g.z) + ") block (" + std::to_string(b.x) + "," + std::to_string(b.y) +
                                 "," + std::to_string(b.z) + ") shared " + std::to_string(shared));
    gridDim = g;
    blockDim = b;
    EmuWarp warp;
    const std::function<void()> body = f;
    for (unsigned z = 0; z < g.z; ++z)
        for (unsigned y = 0; y < g.y; ++y)
            for (unsigned x = 0; x < g.x; ++x) {
                blockIdx = {x, y, z};
                std::fill(acc, acc + SHARED_FLOATS, NAN);  // shared memory starts as garbage
                for (unsigned w = 0; w < b.x / 32; ++w) warp.run(32 * w, body);
            }
    return 0;
} catch (const std::exception& e) {
    last_error = e.what();
    return 1;
}

#define DIMS int gx, int gy, int gz, int bx, int by, int bz, int shared
#define G dim3e{(unsigned)gx, (unsigned)gy, (unsigned)gz}
#define B dim3e{(unsigned)bx, (unsigned)by, (unsigned)bz}

extern "C" {
const char* emu_last_error() { return last_error.c_str(); }

int emu_gather_f32(DIMS, const float* tap, const int* p, const int* ylo, const int* yhi, const float* wy,
                    const int* xlo, const int* xhi, const float* wx, float* out, int n, int S, int h, int w, int C,
                    long long sn, long long ss) {
    return launch(G, B, shared, [=] { gather_f32(tap, p, ylo, yhi, wy, xlo, xhi, wx, out, n, S, h, w, C, sn, ss); });
}
int emu_gather_f16(DIMS, const unsigned short* tap, const int* p, const int* ylo, const int* yhi, const float* wy,
                    const int* xlo, const int* xhi, const float* wx, float* out, int n, int S, int h, int w, int C,
                    long long sn, long long ss) {
    return launch(G, B, shared, [=] { gather_f16(tap, p, ylo, yhi, wy, xlo, xhi, wx, out, n, S, h, w, C, sn, ss); });
}
int emu_argmin_rows_f32(DIMS, const float* x, const float* cross, const float* c_sq, int* labels, float* dist, int m,
                         int D, int k) {
    return launch(G, B, shared, [=] { argmin_rows_f32(x, cross, c_sq, labels, dist, m, D, k); });
}
int emu_argmin_rows_f16(DIMS, const unsigned short* x, const float* cross, const float* c_sq, int* labels,
                         float* dist, int m, int D, int k) {
    return launch(G, B, shared, [=] { argmin_rows_f16(x, cross, c_sq, labels, dist, m, D, k); });
}
int emu_residual_sums_f32(DIMS, const float* x, const int* labels, const float* c, float* out, int S, int D, int k,
                           int kc) {
    return launch(G, B, shared, [=] { residual_sums_f32(x, labels, c, out, S, D, k, kc); });
}
int emu_residual_sums_f16(DIMS, const unsigned short* x, const int* labels, const float* c, float* out, int S, int D,
                           int k, int kc) {
    return launch(G, B, shared, [=] { residual_sums_f16(x, labels, c, out, S, D, k, kc); });
}
}
