"""Build the CUDA host emulator: ``kernels/*.cu`` compiled by g++ against ``emu.h`` (read it for
what the emulation does and does not catch) plus ``launch.cpp``, linked into one shared library.

The kernels are read from the tree these tests belong to (``../../kernels``), through that tree's
own ``kernels/__init__.py``, never through an installed ``fastvlad.kernels``: a clone tested
against another checkout's install must test its own edits. Beside the library the build leaves
``sources.json`` (the text of each kernel file as NVRTC gets it, which ``fakecupy.RawModule``
compares with what fastvlad hands CuPy) and ``signatures.json`` (each ``extern "C"`` kernel's
parameter types, after the preprocessor, which ``fakecupy`` checks every launch's arguments
against).

Signed integer overflow in a kernel fails the launch: the kernels are compiled with
``-fsanitize=signed-integer-overflow`` and ``launch.cpp`` supplies the sanitizer's handlers (no
libubsan needed), which call ``emu_fail``. A 32-bit index that wraps on a large batch (an image
index times S·D past 2³¹) is then an error message, not a read far outside the array.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
KERNELS = HERE.parents[1] / "kernels"
#: The one line of the kernels that is PTX, not C++: fp16 → fp32 widening. Replaced by emu_half.
HALF_ASM = 'asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(*p));'
FLAGS = ["-std=c++20", "-O2", "-fPIC", "-ffp-contract=off", "-Wall", f"-I{HERE}"]
#: Only the kernels: launch.cpp's arithmetic is the emulator's own.
KERNEL_FLAGS = ["-fsanitize=signed-integer-overflow", "-fsanitize-recover=signed-integer-overflow"]
_ENTRY = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)')


def tree_kernels() -> ModuleType:
    """``kernels/__init__.py`` of this tree, loaded from its file (not the installed package)."""
    spec = importlib.util.spec_from_file_location("_tree_kernels", KERNELS / "__init__.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert Path(module.KERNEL_DIR) == KERNELS, module.KERNEL_DIR
    return module


def signatures(preprocessed: str) -> dict[str, list[str]]:
    """``{kernel: [parameter type, …]}`` of the ``extern "C" __global__`` functions in preprocessed
    CUDA C++ (types normalised: qualifiers and names dropped, e.g. ``const float* __restrict__ x``
    → ``float*``, ``long long stride`` → ``long long``)."""
    out = {}
    for name, params in _ENTRY.findall(preprocessed):
        types = []
        for param in (p.strip() for p in params.split(",") if p.strip()):
            words = param.replace("*", " * ").split()
            words = [w for w in words if w not in ("const", "__restrict__", "volatile")][:-1]  # drop the name
            types.append(" ".join(words).replace(" *", "*"))
        out[name] = types
    return out


def build(out: Path) -> Path:
    """Compile into ``out``; returns the path of ``libcudaemu.so``. Raises RuntimeError on failure."""
    gxx = shutil.which("g++")
    if gxx is None:
        raise RuntimeError("g++ is not on PATH")
    kernels = tree_kernels()
    jobs: list[list[str]] = []
    objects, sources, sigs = [], {}, {}
    for cu in sorted(KERNELS.glob("*.cu")):
        text = kernels.source(cu.stem)
        if HALF_ASM not in text:
            raise RuntimeError(f"{cu.name}: the fp16 load is not the line tests/cuda_emu/build.py replaces; update HALF_ASM")
        sources[cu.stem] = text
        plain = out / f"{cu.stem}.nvrtc.cu"
        plain.write_text(text)
        pre = subprocess.run([gxx, "-E", "-P", "-x", "c++", str(plain)], capture_output=True, text=True, timeout=300)
        if pre.returncode:
            raise RuntimeError(f"preprocessing {cu.name}:\n{pre.stderr}")
        sigs.update(signatures(pre.stdout))
        src = out / f"{cu.stem}.emu.cpp"
        src.write_text(text.replace(HALF_ASM, "f = emu_half(*p);"))
        objects.append(out / f"{cu.stem}.o")
        jobs.append([gxx, *FLAGS, *KERNEL_FLAGS, "-include", "emu.h", "-c", str(src), "-o", str(objects[-1])])
    objects.append(out / "launch.o")
    jobs.append([gxx, *FLAGS, "-c", str(HERE / "launch.cpp"), "-o", str(objects[-1])])
    running = [(cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
               for cmd in jobs]
    for cmd, proc in running:
        log, _ = proc.communicate(timeout=300)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd)}\n{log}")
    lib = out / "libcudaemu.so"
    subprocess.run([gxx, "-shared", "-o", str(lib), *map(str, objects)], check=True, capture_output=True, timeout=300)
    (out / "sources.json").write_text(json.dumps(sources))
    (out / "signatures.json").write_text(json.dumps(sigs, indent=1))
    return lib
