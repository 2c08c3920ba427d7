"""Codes of a fixed set of images against the codes fastvlad made before the issue-16 restructuring
(``tests/data/golden_codes.npz``, written by ``tests/data/make_golden_codes.py`` at commit 96300e5):
the default and the faithful settings, the CPU path and the emulated GPU path.

Bit for bit where the BLAS is the one that made them (the GEMMs decide the last bits of a code);
within float32 rounding on another BLAS (another CPU kind, another OpenBLAS kernel) — rounding
relative to the array's scale, since an entry near zero is a cancellation of large terms (a
centre's coordinate of −11.14 in centres up to 3,300 moved by 1.7e-4 between an AMD Zen 3 and an
Intel Xeon with AVX-512: 5e-8 of the scale but 1.5e-5 of the entry; the largest move was 7e-7 of
the scale).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from fastvlad import backends
from fastvlad.encoder import Encoder
from fastvlad.estimator import FastVLAD
from fastvlad.projection import Projection

from .data.golden import PARAMS, blas_fingerprint, images

GOLDEN = np.load(Path(__file__).parent / "data" / "golden_codes.npz")
SAME_BLAS = str(GOLDEN["blas"]) == blas_fingerprint()


def _same(got: np.ndarray, want: np.ndarray) -> None:
    if SAME_BLAS:
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


def _recorded(name: str, device: str) -> FastVLAD:
    """A model with the recorded centres and projection (the encoder, not the fit, is under test)."""
    model = FastVLAD(**PARAMS[name], device=device)
    model.codebook_ = GOLDEN[f"{name}/centres"]
    key = f"{name}/projection"
    model.projection_ = Projection.from_array(GOLDEN[key]) if key in GOLDEN else None
    return model


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_cpu_codes_equal_the_recorded_ones(name: str, vgg16_path: Path) -> None:
    _same(_recorded(name, "cpu").transform(images()), GOLDEN[f"{name}/cpu"])


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_codebook_equals_the_recorded_one(name: str, vgg16_path: Path) -> None:
    model = FastVLAD(**PARAMS[name], device="cpu").fit_codebook(images())
    _same(model.codebook_, GOLDEN[f"{name}/centres"])
    if f"{name}/projection" in GOLDEN:
        _same(model.projection_.to_array(), GOLDEN[f"{name}/projection"])


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
@pytest.mark.parametrize("name", sorted(PARAMS))
def test_emulated_gpu_codes_equal_the_recorded_ones(name: str, vgg16_path: Path, fake_cupy: ModuleType,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "cuda_problem", lambda: None)
    model = _recorded(name, "cuda")
    assert Encoder.of(model).backend.device == "cuda"
    _same(model.transform(images()), GOLDEN[f"{name}/cuda_emulated"])

