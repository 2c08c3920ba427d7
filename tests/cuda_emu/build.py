"""Build the CUDA host emulator: ``kernels/*.cu`` compiled by g++ against ``emu.h`` (read it for
what the emulation does and does not catch) plus ``launch.cpp``, linked into one shared library."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from fastvlad.kernels import source

HERE = Path(__file__).resolve().parent
KERNELS = HERE.parents[1] / "kernels"
#: The one line of the kernels that is PTX, not C++: fp16 → fp32 widening. Replaced by emu_half.
HALF_ASM = 'asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(*p));'
FLAGS = ["-std=c++20", "-O2", "-fPIC", "-ffp-contract=off", "-Wall", f"-I{HERE}"]


def build(out: Path) -> Path:
    """Compile into ``out``; returns the path of ``libcudaemu.so``. Raises RuntimeError on failure."""
    gxx = shutil.which("g++")
    if gxx is None:
        raise RuntimeError("g++ is not on PATH")
    jobs: list[tuple[list[str], subprocess.Popen[str]]] = []
    objects = []
    for cu in sorted(KERNELS.glob("*.cu")):
        text = source(cu.stem)
        if HALF_ASM not in text:
            raise RuntimeError(f"{cu.name}: the fp16 load is not the line tests/cuda_emu/build.py replaces; update HALF_ASM")
        src = out / f"{cu.stem}.emu.cpp"
        src.write_text(text.replace(HALF_ASM, "f = emu_half(*p);"))
        objects.append(out / f"{cu.stem}.o")
        jobs.append(([gxx, *FLAGS, "-include", "emu.h", "-c", str(src), "-o", str(objects[-1])], None))  # type: ignore[arg-type]
    objects.append(out / "launch.o")
    jobs.append(([gxx, *FLAGS, "-c", str(HERE / "launch.cpp"), "-o", str(objects[-1])], None))  # type: ignore[arg-type]
    running = [(cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
               for cmd, _ in jobs]
    for cmd, proc in running:
        log, _ = proc.communicate(timeout=300)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd)}\n{log}")
    lib = out / "libcudaemu.so"
    subprocess.run([gxx, "-shared", "-o", str(lib), *map(str, objects)], check=True, capture_output=True, timeout=300)
    return lib
