"""What every backend implements (the ``Backend`` protocol) and the types its operations take."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

import numpy as np

GPU_INSTALL = ("pip install 'fastvlad[gpu]' (CuPy for CUDA 12 and onnxruntime-gpu; "
               "uninstall the CPU 'onnxruntime' first, see README 'GPU install')")


@dataclass(frozen=True)
class AxisTable:
    """Bilinear interpolation along one axis: for every output index, two source indices and a weight."""

    lo: np.ndarray  # (out,) int32
    hi: np.ndarray  # (out,) int32
    w: np.ndarray  # (out,) float32, weight of ``hi``


#: (row table, column table) of every tap, as ``hypercolumn.tap_tables`` makes them.
Tables = Sequence[tuple[AxisTable, AxisTable]]


class Backend(Protocol):
    """What the stages need of a device. Arrays in and out live on the backend (``asarray``);
    shapes are checked by the stage that calls, not here."""

    @property
    def device(self) -> str:
        """"cpu" or "cuda": the XGBoost device, and the backend's name in messages."""

    @property
    def providers(self) -> tuple[str, ...]:
        """ONNX Runtime execution providers, in order of preference."""

    @property
    def batch_size(self) -> int:
        """Images per CNN call."""

    @property
    def decode_threads(self) -> int:
        """Threads decoding images ahead of the CNN (``images.iter_batches``)."""

    @property
    def xp(self) -> ModuleType:
        """The array module: NumPy or CuPy."""

    def asarray(self, a: Any) -> Any:
        """A host array moved to this backend (no copy on the CPU)."""

    def to_numpy(self, a: Any) -> np.ndarray:
        """An array of this backend (or the host) as a NumPy array."""

    def synchronize(self) -> None:
        """Wait for queued device work (before reading a clock)."""

    def release_memory(self) -> None:
        """Hand cached device memory back (after an out-of-memory error)."""

    def with_batch_size(self, batch_size: int) -> Backend:
        """The same backend with another CNN batch size."""

    def gather(self, taps: Sequence[Any], points: Any, tables: Tables, out: Any, accumulate: bool = False) -> None:
        """Bilinear samples of every tap ``(n, h_l, w_l, C_l)`` at the points ``(n, S, 2)`` into
        ``out`` ``(n, S, ΣC_l)`` float32, tap after tap; with ``accumulate`` every tap (all of C
        channels) is added to ``out`` ``(n, S, C)`` instead."""

    def matmul_per_image(self, a: Any, b: Any, out: Any = None) -> Any:
        """``a @ b`` for a batch ``(n, m, c)`` and a matrix ``(c, p)`` (or one per image, ``(n, c, p)``):
        ``(n, m, p)`` float32, one GEMM per image, so that no image's result depends on its batch."""

    def argmin_rows(self, cross: Any, c_sq: Any, labels: Any) -> Any:
        """``labels[i] = argmin_j c_sq[j] − 2·cross[i, j]`` (lowest j on ties) of a cross term
        ``(m, k)`` float32: ``labels`` ``(m,)`` int32, filled and returned."""

    def assign(self, x: Any, centres: Any, block_rows: int, with_dist: bool) -> tuple[Any, Any]:
        """Nearest centre of every row of ``x`` ``(m, D)`` (GEMM + fused argmin over row blocks):
        labels ``(m,)`` int32 and, with ``with_dist``, squared distances ``(m,)`` float32 (else None)."""

    def residual_sums(self, x: Any, labels: Any, centres: Any) -> Any:
        """Per-centre sums of ``x − c_label``: ``(n, S, D)``, labels ``(n, S)``, centres ``(k, D)``
        → ``(n, k, D)`` (float64 on the CPU, float32 on the GPU)."""

    def vlad(self, x: Any, labels: Any, centres: Any, intra: bool, power: bool, taps: Sequence[Any] = (),
             points: Any = None, tables: Tables = ()) -> Any:
        """VLAD codes ``(n, k·D)`` float32 of hypercolumns whose first columns are ``x`` ``(n, S, D_x)``
        and whose others are ``taps`` interpolated at ``points`` (``tables``), each point counted
        for the centre ``labels`` gives it."""

    def soft_weights(self, cross: Any, c_sq: Any, scale: float, cutoff: float) -> Any:
        """Soft assignment's weights, centre-major: from the cross term x·cᵀ ``(n, S, k)`` float32 and
        the centres' squared norms ``(k,)``, ``w[i, j, s] = e_j / Σ e`` with ``e_j = exp(−z_j)``,
        ``z_j = scale·(d²_j − min d²)`` (``d²_j − min d²`` from ``c_sq − 2·cross``), and ``e_j = 0`` where
        ``z_j > cutoff``: ``(n, k, S)`` float32, each point's column summing to 1 (NaN for a NaN row)."""


def soft_weights(cross: Any, c_sq: Any, scale: float, cutoff: float, xp: ModuleType = np) -> Any:
    """``Backend.soft_weights`` as array expressions, written once against ``xp`` (the CUDA backend's;
    the CPU's Numba kernel is checked against it). One ``(n, S, k)`` array worked in place — the same
    bits as ``w = where(z ≤ cutoff, exp(−min(z, cutoff)), 0) / Σw`` without its six temporaries of that
    size — then laid out centre-major: ``(n, k, S)`` float32."""
    # ‖x‖² is the same for every centre of a point: it cancels in d² − min d².
    z = cross * xp.float32(-2.0)
    z += c_sq
    z -= z.min(axis=2, keepdims=True)
    z *= xp.float32(scale)
    far = ~(z <= cutoff)  # NaN too, as where() would
    xp.minimum(z, cutoff, out=z)
    xp.negative(z, out=z)
    xp.exp(z, out=z)
    z[far] = 0
    z /= z.sum(axis=2, keepdims=True)
    return xp.ascontiguousarray(z.transpose(0, 2, 1))


def normalise(v: Any, intra: bool = True, power: bool = False, xp: ModuleType = np) -> Any:
    """Residual sums ``(n, k, D)`` → VLAD codes ``(n, k·D)`` float32: optional signed square root,
    then per-centre L2 (a zero centre stays zero), then global L2. Written once against ``xp``."""
    if power:
        v = xp.sign(v) * xp.sqrt(xp.abs(v))
    if intra:
        norms = xp.sqrt((v * v).sum(axis=2, keepdims=True))
        v = v / xp.where(norms > 0, norms, 1)
    flat = v.reshape(v.shape[0], -1)
    norms = xp.sqrt((flat * flat).sum(axis=1, keepdims=True))
    return (flat / xp.where(norms > 0, norms, 1)).astype(np.float32)
