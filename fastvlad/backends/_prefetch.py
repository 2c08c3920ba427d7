"""Software prefetch for the Numba kernels that read tap rows at scattered points.

A point's bilinear neighbours are up to four rows of C channels (C/16 cache lines each) far
apart in a tap of several MB: the loads miss every cache, and the out-of-order core finds only a
few of them at a time while it works through the channel loop. Asking for every line of the next
point's rows before working on the current one keeps those misses in flight together (measured
on a 2-core Zen 5, interleaved medians per image: the block1+2 gather 1.35 → 0.69 ms, the fused
VLAD 2.09 → 1.74 ms; BENCHMARKS.md).
"""

from __future__ import annotations

from typing import Any

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

#: How many points ahead the kernels prefetch. One point's work (hundreds of channels) already
#: covers a memory latency; further ahead measured no better and evicts more.
AHEAD = 1


@intrinsic
def _prefetch_element(typingctx: Any, arr: Any, index: Any) -> Any:
    """Hint the CPU to load the cache line holding ``arr``'s element ``index`` (counted from its
    first element in units of its dtype). A prefetch never faults, so any address is safe."""
    if not isinstance(arr, types.Array) or not isinstance(index, types.Integer):
        return None

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        a, i = args
        data = context.make_array(signature.args[0])(context, builder, a).data
        byte, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [byte, i32, i32, i32]),
                                            "llvm.prefetch.p0i8")
        # read (0), keep in every cache level (3), data cache (1)
        builder.call(fn, [builder.bitcast(builder.gep(data, [i]), byte), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return types.void(arr, index), codegen


@njit(inline="always")  # pragma: no cover - jitted
def prefetch_row(row):  # type: ignore[no-untyped-def]
    """Prefetch every 64-byte line of a 1-D view with unit stride (a channels-last pixel)."""
    step = max(64 // row.itemsize, 1)
    for offset in range(0, row.shape[0], step):
        _prefetch_element(row, offset)
