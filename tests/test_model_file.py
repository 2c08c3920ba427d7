"""The model file's guarantees without a CNN: atomic saves, a closed member list, checked contents,
and the training metadata (data hash) it records."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fastvlad import model_file
from fastvlad.errors import FastVLADError, ModelFormatError
from fastvlad.estimator import FastVLAD

from .conftest import small_model_params


def _contents(codebook: np.ndarray | None = None) -> model_file.ModelContents:
    cb = np.arange(12, dtype=np.float32).reshape(3, 4) if codebook is None else codebook
    return model_file.ModelContents({"params": {"k": 3}, "classes": ["a", "b"]}, cb, b"booster bytes")


def _rewrite(path: Path, out: Path, change: dict[str, bytes | None]) -> Path:
    """Copy a model file, replacing (bytes) or dropping (None) members."""
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    for name, data in change.items():
        if data is None:
            members.pop(name, None)
        else:
            members[name] = data
    with zipfile.ZipFile(out, "w") as zf:
        for n, d in members.items():
            zf.writestr(n, d)
    return out


def test_roundtrip(tmp_path: Path) -> None:
    path = model_file.save(tmp_path / "m.fvl", _contents())
    got = model_file.load(path)
    np.testing.assert_array_equal(got.codebook, _contents().codebook)
    assert got.booster == b"booster bytes" and got.config["classes"] == ["a", "b"]
    assert [p.name for p in tmp_path.iterdir()] == ["m.fvl"]


@pytest.mark.parametrize("exc", [KeyboardInterrupt, OSError])
def test_interrupted_save_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: type) -> None:
    original = zipfile.ZipFile.writestr
    calls = []

    def failing(self, name, data, *a, **kw):  # type: ignore[no-untyped-def]
        calls.append(name)
        if len(calls) == 3:  # in the middle of the members
            raise exc("interrupted")
        return original(self, name, data, *a, **kw)

    monkeypatch.setattr(zipfile.ZipFile, "writestr", failing)
    with pytest.raises((exc, FastVLADError)):  # an OSError may come back as a FastVLADError saying what failed
        model_file.save(tmp_path / "m.fvl", _contents())
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temporary file


def test_interrupted_overwrite_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = model_file.save(tmp_path / "m.fvl", _contents())
    before = path.read_bytes()

    def failing(self, name, data, *a, **kw):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(zipfile.ZipFile, "writestr", failing)
    with pytest.raises(KeyboardInterrupt):
        model_file.save(path, _contents(np.zeros((3, 4), np.float32)))
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["m.fvl"]


def test_member_not_in_manifest_is_refused(tmp_path: Path) -> None:
    path = model_file.save(tmp_path / "m.fvl", _contents())
    bad = _rewrite(path, tmp_path / "bad.fvl", {"extra.pkl": b"\x80\x04."})
    with pytest.raises(ModelFormatError, match="extra.pkl.*not in the manifest"):
        model_file.load(bad)


def test_missing_member_is_refused(tmp_path: Path) -> None:
    path = model_file.save(tmp_path / "m.fvl", _contents())
    with pytest.raises(ModelFormatError, match="booster.ubj is missing"):
        model_file.load(_rewrite(path, tmp_path / "bad.fvl", {"booster.ubj": None}))


def test_other_format_version_is_refused(tmp_path: Path) -> None:
    path = model_file.save(tmp_path / "m.fvl", _contents())
    fmt = json.dumps({"format": model_file.FORMAT, "version": model_file.VERSION + 1}).encode()
    with pytest.raises(ModelFormatError, match=f"version {model_file.VERSION + 1} is not supported"):
        model_file.load(_rewrite(path, tmp_path / "bad.fvl", {"format.json": fmt}))


@pytest.mark.parametrize("codebook", [np.zeros((3, 4), np.float64), np.zeros(12, np.float32),
                                      np.full((3, 4), np.nan, np.float32)])
def test_bad_codebook_is_refused_even_with_matching_hashes(tmp_path: Path, codebook: np.ndarray) -> None:
    path = tmp_path / "m.fvl"
    real_npy = model_file._npy_bytes
    model_file.save(path, _contents())
    raw = real_npy(codebook)  # a consistent file (manifest updated) whose codebook is wrong
    with zipfile.ZipFile(path) as zf:
        manifest = json.loads(zf.read("manifest.json"))
    manifest["codebook.npy"] = __import__("hashlib").sha256(raw).hexdigest()
    bad = _rewrite(path, tmp_path / "bad.fvl", {"codebook.npy": raw, "manifest.json": json.dumps(manifest).encode()})
    with pytest.raises(ModelFormatError, match="codebook.npy must be a finite 2-D float32"):
        model_file.load(bad)


def test_data_sha256_depends_on_content_and_labels_not_order(tmp_path: Path) -> None:
    files = []
    for i in range(3):
        files.append(tmp_path / f"{i}.png")
        files[-1].write_bytes(bytes([i]) * 10)
    h = model_file.data_sha256(files, ["a", "b", "a"])
    assert h == model_file.data_sha256(files[::-1], ["a", "b", "a"][::-1])
    assert h != model_file.data_sha256(files, ["a", "a", "a"])
    files[0].write_bytes(b"\x00" * 9 + b"\x01")
    assert h != model_file.data_sha256(files, ["a", "b", "a"])
    arr = np.zeros((4, 4), np.uint8)
    assert model_file.data_sha256([arr]) != model_file.data_sha256([arr.astype(np.uint16)])


def test_training_metadata_in_the_file(vgg16_path: Path, small_demo: tuple[list[np.ndarray], np.ndarray],
                                       tmp_path: Path) -> None:
    X, y = small_demo
    model = FastVLAD(**small_model_params(n_estimators=3)).fit(X[:12], y[:12])
    with zipfile.ZipFile(model.save(tmp_path / "m.fvl")) as zf:
        cfg = json.loads(zf.read("config.json"))
    train = cfg["train"]
    assert train["images_sha256"] == model_file.data_sha256(X[:12], y[:12])
    assert train["n_images"] == 12 and sum(train["class_counts"].values()) == 12
    assert {"cnn", "total"} <= set(train["timings"]) and cfg["versions"]["onnxruntime"]
    assert cfg["backbone_sha256"] == model.backbone_sha256_ and len(cfg["backbone_sha256"]) == 64


def test_numpy_typed_parameters_save_and_load(vgg16_path: Path, small_demo: tuple[list[np.ndarray], np.ndarray],
                                              tmp_path: Path) -> None:
    """``image_size=np.array([64, 64])`` (or ``zoom``, ``k`` as NumPy values) passed every check and
    the fit, then ``save`` died in json.dumps ("ndarray is not JSON serializable")."""
    from fastvlad import load

    X, y = small_demo
    model = FastVLAD(**small_model_params(image_size=np.array([64, 64]), zoom=np.array([1.2]), k=np.int64(8),
                                          density=np.float64(0.1))).fit(X[:16], y[:16])
    loaded = load(model.save(tmp_path / "m.fvl"))
    assert (loaded.image_size, loaded.zoom, loaded.k) == ((64, 64), (1.2,), 8) and type(loaded.k) is int
    np.testing.assert_array_equal(loaded.transform(X[16:20]), model.transform(X[16:20]))


@pytest.mark.parametrize("labels", [[0, 1, 2, 3], [0.5, 1.5, 2.5, 3.5], ["0", "1", "2", "3"]], ids=["int", "float", "text"])
def test_labels_keep_their_type_through_save_and_load(tmp_path: Path, labels: list[object]) -> None:
    """Numbers stay numbers: ``save`` had written every class as text, so a model trained on 0/1/2/3
    predicted ``'0'`` after load where it had predicted ``0`` (``predict(X) == y`` all False)."""
    from fastvlad import load

    from . import tiny_model

    images, y = tiny_model.demo_images()
    X = list(images[:8])
    mapped = [labels[int(c)] for c in np.unique(y, return_inverse=True)[1]]
    model = tiny_model.fitted_copy().fit_codes(tiny_model.fitted().transform(list(images)), mapped)
    loaded = load(model.save(tmp_path / "m.fvl"))
    before, after = model.predict(X), loaded.predict(X)
    assert after.dtype == before.dtype == np.asarray(labels).dtype
    np.testing.assert_array_equal(after, before)


def test_a_loaded_model_saved_again_keeps_its_training_record(tmp_path: Path) -> None:
    """A loaded model has no ``timings_``: saving it again had written ``"timings": {}``."""
    from fastvlad import load

    from . import tiny_model

    first = tiny_model.fitted().save(tmp_path / "a.fvl")
    again = load(load(first).save(tmp_path / "b.fvl"))
    train = load(first).train_info_
    assert train["timings"] and again.train_info_ == train
    # and a loaded model has the fitted attributes a fitted one has, from the fit's record
    assert again.timings_ == tiny_model.fitted().timings_ and again.skipped_ == tiny_model.fitted().skipped_ == []


@pytest.mark.parametrize("changed", [{"k": 6}, {"pca": 8}, {"classifier": "ridge"}, {"code_pca": None}])
def test_save_refuses_parameters_that_no_longer_match_the_fit(tmp_path: Path, changed: dict[str, object]) -> None:
    """``set_params(k=8)`` (or ``pca``, ``classifier``, ``code_pca``) after the fit: ``save`` wrote a
    file that ``load`` then refused as damaged or edited."""
    from . import tiny_model

    images, y = tiny_model.demo_images()
    model = tiny_model.fitted_copy(classifier="ridge", code_pca=5) if "code_pca" in changed else tiny_model.fitted_copy()
    if "code_pca" in changed:
        model.fit_codes(tiny_model.fitted().transform(list(images)), y)
    model.set_params(**changed)
    with pytest.raises(FastVLADError, match="not saved: this model's parameters no longer match what it fitted"):
        model.save(tmp_path / "m.fvl")
    assert not list(tmp_path.iterdir())
