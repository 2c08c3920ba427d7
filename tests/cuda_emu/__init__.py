"""Host emulator of the CUDA kernels (see emu.h), so the default test run executes them."""
