"""A model gives the same codes, bit for bit, before and after save/load and whatever the memory
layout of its arrays (issue 17, part 0).

OpenBLAS with AVX-512 rounds ``a @ b`` differently for a transposed (Fortran-ordered) ``b`` than
for a C-contiguous one; the fitted PCA weight came from LAPACK transposed and the loaded one
C-contiguous, so on such a CPU the codes moved by ~2e-7 and a boosted-tree split flipped. Most
CPUs (this CI's included) round both layouts alike, so the tests also run under a stand-in BLAS
that does not (``layout_sensitive_blas``): the property holds on every CPU, not just this one.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import fastvlad
from fastvlad.estimator import FastVLAD
from fastvlad.projection import Projection

from . import tiny_model
from .conftest import small_model_params

_MATMUL = np.matmul


def _layout_sensitive_matmul(a, b, out=None, **kw):  # type: ignore[no-untyped-def]
    """``np.matmul``, except that a 2-D ``b`` that is not C-contiguous is multiplied in float64
    and rounded once: other bits, as a BLAS with a separate transposed kernel may give."""
    if isinstance(b, np.ndarray) and b.ndim == 2 and not b.flags.c_contiguous and not kw:
        r = _MATMUL(np.asarray(a, np.float64), b.astype(np.float64)).astype(np.float32)
        if out is None:
            return r
        out[...] = r
        return out
    return _MATMUL(a, b, out=out, **kw)


@pytest.fixture(params=["native BLAS", "layout-sensitive BLAS"])
def blas(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param != "native BLAS":
        monkeypatch.setattr(np, "matmul", _layout_sensitive_matmul)
    yield request.param


SETTINGS = {
    "default": {},  # pca=64: the projection is fitted
    "pca": {"pca": 16, "whiten": True},
    "faithful": {**FastVLAD.faithful().get_params(), **small_model_params(), "pca": None, "max_bin": 256},
}


@pytest.fixture(scope="module", params=list(SETTINGS))
def fitted_and_loaded(request: pytest.FixtureRequest, vgg16_path: Path,
                      tmp_path_factory: pytest.TempPathFactory) -> tuple[FastVLAD, FastVLAD]:
    images, labels = tiny_model.demo_images()
    if request.param == "default":
        fitted = tiny_model.fitted()
    else:
        fitted = FastVLAD(**{**small_model_params(n_estimators=5), **SETTINGS[request.param]}).fit(list(images), labels)
    loaded = fastvlad.load(fitted.save(tmp_path_factory.mktemp("layout") / "m.fvl"))
    return fitted, loaded


def _bits(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).tobytes()


def test_fitted_arrays_are_c_contiguous_float32(fitted_and_loaded: tuple[FastVLAD, FastVLAD]) -> None:
    for model in fitted_and_loaded:
        arrays = [model.codebook_]
        if model.projection_ is not None:
            arrays += [model.projection_.weight, model.projection_.bias]
        for a in arrays:
            assert a.dtype == np.float32 and a.flags.c_contiguous, (a.dtype, a.strides)


def test_fitted_and_loaded_codes_are_equal_bit_for_bit(fitted_and_loaded: tuple[FastVLAD, FastVLAD],
                                                       blas: str) -> None:
    fitted, loaded = fitted_and_loaded
    images, _ = tiny_model.demo_images()
    X = list(images[::3])
    assert _bits(loaded.transform(X)) == _bits(fitted.transform(X))
    assert _bits(loaded.predict_proba(X)) == _bits(fitted.predict_proba(X))


def _strided(a: np.ndarray) -> np.ndarray:
    """The values of ``a`` in a view that is neither C- nor Fortran-contiguous."""
    big = np.zeros((*a.shape[:-1], 2 * a.shape[-1]), dtype=a.dtype)
    big[..., ::2] = a
    return big[..., ::2]


@pytest.mark.parametrize("layout", ["fortran", "strided", "float64"])
def test_codes_do_not_depend_on_the_arrays_layout(vgg16_path: Path, blas: str, layout: str) -> None:
    """Projection and centres arriving Fortran-ordered, strided or as float64 (the same values)
    give the codes of the C-contiguous float32 ones, bit for bit."""
    reference = tiny_model.fitted()
    proj = reference.projection_
    assert proj is not None
    change = {"fortran": np.asfortranarray, "strided": _strided, "float64": lambda a: a.astype(np.float64)}[layout]
    model = copy.copy(reference)
    model.codebook_ = change(reference.codebook_)
    model.projection_ = Projection(change(proj.weight), change(proj.bias), proj.explained_variance_ratio)
    assert model.projection_.weight.flags.c_contiguous and model.projection_.weight.dtype == np.float32
    images, _ = tiny_model.demo_images()
    X = list(images[1::4])
    assert _bits(model.transform(X)) == _bits(reference.transform(X))
