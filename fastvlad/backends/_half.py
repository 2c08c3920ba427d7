"""float16 inputs for the Numba kernels, which compute in float32.

Numba's CPU target has no float16 arrays, so a float16 array reaches a kernel as its uint16 bit
patterns plus a 65,536-entry float32 table built by NumPy; ``widen`` looks each value up (exact:
the same values as ``astype(np.float32)``, subnormals, infinities and NaNs included). A float32
array reaches the kernel as itself with an empty table, and ``widen`` compiles to nothing.
"""

from __future__ import annotations

import numpy as np
from numba import types
from numba.extending import overload

#: float32 value of every float16 bit pattern (256 KB: stays in L2 while a kernel runs).
F16_TABLE = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
_NO_TABLE = np.zeros(0, dtype=np.float32)


def kernel_input(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``a`` as a Numba kernel takes it: float32 as is, float16 as uint16 bits (with the table),
    anything else converted to float32. Returns (array, table); no copy for float32/float16."""
    if a.dtype == np.float16:
        return a.view(np.uint16), F16_TABLE
    if a.dtype != np.float32:
        a = a.astype(np.float32)
    return a, _NO_TABLE


def widen(v, table):  # type: ignore[no-untyped-def]
    """One element of a ``kernel_input`` array as float32 (inside jitted code)."""
    return table[v] if table.size else np.float32(v)


@overload(widen, inline="always")
def _widen_jit(v, table):  # type: ignore[no-untyped-def]
    if isinstance(v, types.Integer):
        return lambda v, table: table[v]
    return lambda v, table: np.float32(v)
