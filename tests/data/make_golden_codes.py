"""Write ``golden_codes.npz``: codes of a fixed set of images made by fastvlad at commit 96300e5
(before the issue-16 restructuring), for ``tests/test_golden_codes.py``.

Run once, from the repository root, on the tree whose codes are to be recorded:
``python tests/data/make_golden_codes.py``. It records, for the default and the faithful settings
(small images, k = 8), the centres and projection fitted on the CPU, and the codes of the CPU path
and of the emulated GPU path (``tests/cuda_emu``) computed with those centres, plus a fingerprint of
the BLAS that made them (the test is exact on a matching BLAS, within float32 rounding elsewhere).

Historic: it runs on a tree of that commit only, through the API of its time (``fastvlad._cuda``,
``backends._cuda_problem``), which is gone since; re-recording on a later tree would first port the
emulated-GPU lines to ``backends.cuda`` — and would record that tree's codes, not 96300e5's.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from fastvlad.estimator import FastVLAD  # noqa: E402
from tests.data.golden import PARAMS, blas_fingerprint, images  # noqa: E402


def main() -> None:
    out: dict[str, np.ndarray] = {"blas": np.array(blas_fingerprint())}
    X = images()
    fitted = {}
    known = FastVLAD().get_params()
    for name, params in PARAMS.items():
        # Parameters newer than the tree being recorded (e.g. normalize="none") are its behaviour anyway.
        model = FastVLAD(**{k: v for k, v in params.items() if k in known}, device="cpu").fit_codebook(X)
        fitted[name] = model
        out[f"{name}/centres"] = model.codebook_
        if model.projection_ is not None:
            out[f"{name}/projection"] = model.projection_.to_array()
        out[f"{name}/cpu"] = model.transform(X)
    # The emulated GPU path, with the CPU's centres and projection (old API: pipeline + backends).
    from fastvlad import _cuda, backends
    from tests.cuda_emu import build, fakecupy

    with tempfile.TemporaryDirectory() as tmp:
        sys.modules["cupy"] = fakecupy.load(build.build(Path(tmp)))
        backends._cuda_problem.cache_clear()
        backends._cuda_problem = lambda: None  # type: ignore[assignment]
        _cuda._MODULES.clear()
        for name, model in fitted.items():
            model.set_params(device="cuda")
            out[f"{name}/cuda_emulated"] = model.transform(X)
    np.savez_compressed(REPO / "tests" / "data" / "golden_codes.npz", **out)
    print({k: v.shape for k, v in out.items()})


if __name__ == "__main__":
    main()
