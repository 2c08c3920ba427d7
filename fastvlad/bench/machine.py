"""What ``fastvlad bench`` records about the machine: CPU, cores, memory, device, versions,
and the peak resident memory of a block of work (sampled on a thread)."""

from __future__ import annotations

import os
import platform
import resource
import sys
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

from .. import config
from ..backends import Backend


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def memory_bytes() -> int | None:
    """Physical memory of the machine, or None where the OS does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def gpu_name(backend: Backend) -> str | None:
    """Name of GPU 0 when the backend runs on CUDA, else None."""
    if backend.device != "cuda":
        return None
    import cupy

    name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def library_versions() -> dict[str, str]:
    """``estimator.versions()`` plus the baseline and peer libraries the bench uses."""
    import sklearn

    from ..estimator import versions

    out = {**versions(), "scikit-learn": sklearn.__version__}
    try:
        import faiss

        out["faiss"] = str(faiss.__version__)
    except ImportError:
        pass
    return out


def machine_info(backend: Backend) -> dict[str, Any]:
    """CPU model, cores, memory, OS, device, ONNX Runtime providers, GPU and versions."""
    return {"cpu": cpu_model(), "cpu_cores": os.cpu_count(), "usable_cores": config.usable_cores(),
            "memory_bytes": memory_bytes(), "os": platform.platform(), "device": backend.device,
            "providers": list(backend.providers), "gpu": gpu_name(backend), "versions": library_versions(),
            "cpu_vnni": _has_vnni()}


def _has_vnni() -> bool:
    """Whether the CPU has int8 dot products (what ``precision="auto"`` reads)."""
    from ..quantize import has_vnni

    return has_vnni()


def current_rss() -> int | None:
    """Resident memory of this process in bytes (``/proc/self/statm``, else psutil), or None."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        return None


def max_rss() -> int:
    """The process's lifetime peak resident memory in bytes (``getrusage``)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS reports bytes, Linux KiB


class PeakRSS:
    """Peak resident memory while a ``with`` block runs, polled every ``interval`` seconds.

    ``peak`` and ``baseline`` are bytes; ``delta`` = peak − RSS at entry. Where the current
    RSS cannot be read, ``peak`` falls back to the process's lifetime peak (``exact`` False).
    """

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.baseline = 0
        self.peak = 0
        self.exact = current_rss() is not None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        rss = current_rss()
        if rss is not None and rss > self.peak:
            self.peak = rss

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> PeakRSS:
        self.baseline = current_rss() or 0
        self.peak = self.baseline
        if self.exact:
            self._thread = threading.Thread(target=self._poll, name="fastvlad-rss", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        if not self.exact:
            self.peak = max_rss()

    @property
    def delta(self) -> int:
        return max(0, self.peak - self.baseline)
