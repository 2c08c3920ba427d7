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

#include <vector>

constexpr int SHARED_FLOATS = 48 * 1024 / 4;
constexpr int GUARD_FLOATS = 1024;  // past the 48 KB: a kernel overrunning even the largest launch shows
// The dynamic shared memory (`extern __shared__ float acc[]` in vlad.cu). Before every block the
// bytes the launch asked for hold NaN (garbage) and every float after them a canary; a block that
// wrote past its launch's `shared` bytes changed a canary, and the launch fails after that block.
float acc[SHARED_FLOATS + GUARD_FLOATS];
constexpr unsigned CANARY = 0x7fa5a5a5u;  // a NaN, so a read past the size poisons the result too

static std::string last_error;
static std::vector<unsigned> only_x;  // blocks along x that run (all when empty): see emu_only_blocks_x

static void fill_shared(int shared) {
    const int used = shared / 4;
    std::fill(acc, acc + used, NAN);
    float canary;
    std::memcpy(&canary, &CANARY, 4);
    std::fill(acc + used, acc + SHARED_FLOATS + GUARD_FLOATS, canary);
}

static void check_shared(int shared) {
    const int used = shared / 4;
    for (int i = used; i < SHARED_FLOATS + GUARD_FLOATS; ++i) {
        unsigned bits;
        std::memcpy(&bits, &acc[i], 4);
        if (bits != CANARY)
            throw std::runtime_error("a block wrote shared memory float " + std::to_string(i) + " (byte " +
                                     std::to_string(4 * i) + "), past the " + std::to_string(shared) +
                                     " bytes of dynamic shared memory its launch gave (shared_mem too small)" +
                                     " (block " + std::to_string(blockIdx.x) + "," + std::to_string(blockIdx.y) +
                                     "," + std::to_string(blockIdx.z) + ")");
    }
}

// Runs the grid; returns 0, or 1 with the reason in emu_last_error().
template <class F>
static int launch(dim3e g, dim3e b, int shared, F f) try {
    if (b.x == 0 || b.x > 1024 || b.x % 32 || b.y != 1 || b.z != 1 || g.x == 0 || g.y == 0 || g.z == 0 ||
        g.y > 65535 || g.z > 65535 || shared < 0 || shared > SHARED_FLOATS * 4)  // 48 KB without opt-in
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
                if (!only_x.empty() && std::find(only_x.begin(), only_x.end(), x) == only_x.end()) continue;
                blockIdx = {x, y, z};
                fill_shared(shared);  // shared memory starts as garbage, canaries past its size
                for (unsigned w = 0; w < b.x / 32; ++w) warp.run(32 * w, body);
                check_shared(shared);
            }
    return 0;
} catch (const std::exception& e) {
    last_error = e.what();
    return 1;
}

#define DIMS int gx, int gy, int gz, int bx, int by, int bz, int shared
#define G dim3e{(unsigned)gx, (unsigned)gy, (unsigned)gz}
#define B dim3e{(unsigned)bx, (unsigned)by, (unsigned)bz}

// Handlers of g++'s -fsanitize=signed-integer-overflow (the kernels are built with it, see
// build.py): an overflow fails the launch through emu_fail, naming the source line.
struct EmuSourceLocation {
    const char* file;
    unsigned line, column;
};

static void overflow(void* data, const char* what) {
    const auto* loc = static_cast<const EmuSourceLocation*>(data);
    emu_fail(std::string("signed integer overflow (") + what + ") at " + loc->file + ":" + std::to_string(loc->line) +
             ":" + std::to_string(loc->column) + ": an int index wrapped; compute it in long long");
}

extern "C" {
void __ubsan_handle_add_overflow(void* d, void*, void*) { overflow(d, "+"); }
void __ubsan_handle_sub_overflow(void* d, void*, void*) { overflow(d, "-"); }
void __ubsan_handle_mul_overflow(void* d, void*, void*) { overflow(d, "*"); }
void __ubsan_handle_negate_overflow(void* d, void*) { overflow(d, "unary -"); }
void __ubsan_handle_divrem_overflow(void* d, void*, void*) { overflow(d, "/ or %"); }
void __ubsan_handle_add_overflow_abort(void* d, void*, void*) { overflow(d, "+"); }
void __ubsan_handle_sub_overflow_abort(void* d, void*, void*) { overflow(d, "-"); }
void __ubsan_handle_mul_overflow_abort(void* d, void*, void*) { overflow(d, "*"); }
void __ubsan_handle_negate_overflow_abort(void* d, void*) { overflow(d, "unary -"); }
void __ubsan_handle_divrem_overflow_abort(void* d, void*, void*) { overflow(d, "/ or %"); }

const char* emu_last_error() { return last_error.c_str(); }

// Run only the blocks whose blockIdx.x is one of xs[0..n) (n = 0: all again). For tests of large
// grids (a batch whose indices pass 2^31) where only the first and last images are checked.
void emu_only_blocks_x(const unsigned* xs, int n) { only_x.assign(xs, xs + n); }

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
