"""Model files made on purpose to hurt: each is a ``ModelFormatError`` whose message names the
file and the problem, whatever the manifest says (it is re-hashed here, as an editor would).
The booster, the container (zip bombs, paths, duplicate names), the arrays and config.json."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fastvlad
from fastvlad import booster_check, model_file
from fastvlad.errors import ModelFormatError

from . import model_files, tiny_model


@pytest.fixture(scope="module")
def saved(vgg16_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hostile") / "m.fvl"
    path.write_bytes(model_files.tiny_model_bytes())
    return path


def _refused(path: Path, match: str) -> str:
    with pytest.raises(ModelFormatError, match=match) as info:
        fastvlad.load(path)
    assert str(path) in str(info.value)
    return str(info.value)


# -- the booster ---------------------------------------------------------------------------------
def _booster_model(saved: Path) -> Any:
    return booster_check.decode(model_files.members_of(saved)["booster.ubj"])


def _with_booster(saved: Path, out: Path, model: Any) -> Path:
    return model_files.edited(saved, out, booster_ubj=booster_check.encode(model))


def _tree0(m: Any) -> dict[str, Any]:
    return m["learner"]["gradient_booster"]["model"]["trees"][0]


def _set(field: str, index: int, value: float) -> Any:
    def edit(m: Any) -> None:
        typed = _tree0(m)[field]
        a = typed.array().copy()
        a[index] = value
        _tree0(m)[field] = booster_check.Typed(typed.marker, a.tobytes())

    return edit


def _shorter(field: str) -> Any:
    def edit(m: Any) -> None:
        typed = _tree0(m)[field]
        _tree0(m)[field] = booster_check.Typed(typed.marker, typed.raw[: -typed.dtype.itemsize])

    return edit


BOOSTER_EDITS = {
    "child out of the tree": (_set("left_children", 0, 10**6), "left_children must be -1 or a later node"),
    "child before its parent (a cycle)": (_set("right_children", 0, 0), "right_children must be -1 or a later node"),
    "split feature beyond the code": (_set("split_indices", 0, 10**6), r"split_indices must lie in \[0, 512\)"),
    "negative split feature": (_set("split_indices", 0, -3), "split_indices must lie in"),
    "NaN leaf value": (_set("split_conditions", 1, np.nan), "split_conditions holds NaN"),
    "infinite hessian": (_set("sum_hessian", 0, np.inf), "sum_hessian holds NaN or infinite"),
    "one-child node": (_set("right_children", 0, -1), "one child|exactly one"),
    "categorical split": (_set("split_type", 0, 1), "numerical splits only"),
    "short array": (_shorter("parents"), "parents must be a typed array"),
    "wrong parent": (_set("parents", 1, 2), "parents do not match"),
    "more classes": (lambda m: m["learner"]["learner_model_param"].update(num_class="5"), "num_class is 5, expected 4"),
    "other objective": (lambda m: m["learner"]["objective"].update(name="reg:squarederror"), "multi:softprob"),
    "code width": (lambda m: m["learner"]["learner_model_param"].update(num_feature="9999"), "code width"),
    "tree count": (lambda m: m["learner"]["gradient_booster"]["model"]["gbtree_model_param"].update(num_trees="999"),
                   "num_trees is 999"),
    "tree class": (lambda m: m["learner"]["gradient_booster"]["model"]["tree_info"].__setitem__(0, 7), "tree_info"),
    "dart booster": (lambda m: m["learner"]["gradient_booster"].update(name="dart"), "gbtree"),
    "unknown field": (lambda m: m["learner"].update(extra="x"), r"unexpected field\(s\) \['extra'\]"),
    "node count": (lambda m: _tree0(m)["tree_param"].update(num_nodes="99999999999"), "num_nodes must be a decimal"),
    "base score": (lambda m: m["learner"]["learner_model_param"].update(base_score="[nan]"), "base_score"),
}


@pytest.mark.parametrize("name", list(BOOSTER_EDITS))
def test_booster_edits_are_refused(saved: Path, tmp_path: Path, name: str) -> None:
    edit, match = BOOSTER_EDITS[name]
    model = _booster_model(saved)
    edit(model)
    _refused(_with_booster(saved, tmp_path / "bad.fvl", model), f"booster.ubj: .*{match}")


@pytest.mark.parametrize(("data", "match"), [
    (b"", "bytes needed"),
    (b"{}}", "bytes after the model"),
    (b'{"learner": {}}', "marker"),  # JSON, not UBJSON
    (b"{L\x00\x00\x00\x00\x00\x00\x00\x01aZL\x00\x00\x00\x00\x00\x00\x00\x01aZ}", "duplicate key 'a'"),
    (b"[$d#L\x7f\xff\xff\xff\xff\xff\xff\xff", "typed array of .* values exceeds the bytes left"),
    (b"[" * 100 + b"]" * 100, "nested deeper"),
    (b"{N}", "marker"),
    (b"SL\x00\x00\x00\x00\x00\x00\x00\x02\xff\xfe", "not UTF-8"),
])
def test_hostile_ubjson_is_refused(data: bytes, match: str) -> None:
    with pytest.raises(booster_check.BoosterError, match=match):
        booster_check.decode(data)


def test_booster_roundtrip_is_exact(saved: Path) -> None:
    """What XGBoost gets is the file's model encoded again: the same model, the same predictions."""
    from fastvlad import classifier

    raw = model_files.members_of(saved)["booster.ubj"]
    checked = booster_check.checked(raw, 4, tiny_model.fitted().codebook_.size)
    assert booster_check.decode(checked) == booster_check.decode(raw)
    original, again = classifier.from_bytes(raw), classifier.from_bytes(checked)
    codes = np.random.default_rng(0).standard_normal((20, tiny_model.fitted().codebook_.size)).astype(np.float32)
    np.testing.assert_array_equal(classifier.predict_proba(again, codes), classifier.predict_proba(original, codes))
    assert bytes(again.save_raw("ubj")) == bytes(original.save_raw("ubj"))


def test_cli_exits_2_on_a_hostile_model(saved: Path, tmp_path: Path, demo_folder: Path) -> None:
    model = _booster_model(saved)
    _set("left_children", 0, 10**6)(model)
    bad = _with_booster(saved, tmp_path / "bad.fvl", model)
    proc = subprocess.run([sys.executable, "-m", "fastvlad", "predict", str(bad), str(demo_folder), "-o",
                           str(tmp_path / "p.csv")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "left_children" in proc.stderr and str(bad) in proc.stderr


# -- the container ----------------------------------------------------------------------------------
def _zip(out: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name it is asked to write
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, data in entries:
                zf.writestr(name, data)
    return out


def test_member_paths_and_duplicates_are_refused(saved: Path, tmp_path: Path) -> None:
    # One member fewer (the optional projection), so the entry count is that of a model.
    members = [(n, d) for n, d in model_files.members_of(saved).items() if n != "projection.npy"]
    for name, match in (("../config.json", "is a path"), ("/etc/config.json", "is a path"),
                        ("sub/../../x.npy", "is a path"), ("C:\\model\\x.npy", "is a path"),
                        ("config.json", r"\['config.json'\] appear more than once")):
        _refused(_zip(tmp_path / "bad.fvl", [*members, (name, b"{}")]), match)


def test_zip_bomb_by_declared_size(saved: Path, tmp_path: Path) -> None:
    """A member declaring more than a model's member may hold is refused before it is inflated:
    a real 1.1 GiB of zeros, compressed to about a megabyte."""
    members = dict(model_files.members_of(saved))
    out = tmp_path / "bomb.fvl"
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, data in members.items():
            if name == "codebook.npy":
                with zf.open(name, "w", force_zip64=True) as f:
                    block = bytes(1 << 24)
                    for _ in range(69):  # 69 × 16 MiB = 1.08 GiB > MEMBER_LIMITS["codebook.npy"]
                        f.write(block)
            else:
                zf.writestr(name, data)
    assert out.stat().st_size < 8 << 20
    _refused(out, r"codebook.npy declares 1157627904 bytes, over the 1073741824 .*zip bomb")


def _patch_central_size(path: Path, name: str, size: int) -> None:
    """Overwrite the uncompressed size that the central directory declares for ``name``."""
    raw = bytearray(path.read_bytes())
    at = raw.index(b"PK\x01\x02")  # the first central-directory entry; entries follow each other
    while True:
        n_len = struct.unpack_from("<H", raw, at + 28)[0]
        if raw[at + 46 : at + 46 + n_len].decode() == name:
            struct.pack_into("<I", raw, at + 24, size)
            break
        extra, comment = struct.unpack_from("<HH", raw, at + 30)
        at += 46 + n_len + extra + comment
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("delta", [-100, +100])
def test_declared_size_must_be_the_real_size(saved: Path, tmp_path: Path, delta: int) -> None:
    bad = tmp_path / "bad.fvl"
    bad.write_bytes(saved.read_bytes())
    size = len(model_files.members_of(saved)["booster.ubj"])
    _patch_central_size(bad, "booster.ubj", size + delta)
    _refused(bad, "not a readable fastvlad model file|holds .* bytes but declares")


def test_member_limits_and_counts(saved: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    members = list(model_files.members_of(saved).items())
    _refused(_zip(tmp_path / "many.fvl", members + [(f"x{i}", b"") for i in range(10)]), "declares 16 members in a")
    monkeypatch.setitem(model_file.MEMBER_LIMITS, "config.json", 100)
    _refused(saved, r"config.json declares \d+ bytes, over the 100")


def test_encrypted_or_unusual_compression_is_refused(saved: Path, tmp_path: Path) -> None:
    members = model_files.members_of(saved)
    info = zipfile.ZipInfo("codebook.npy")
    info.compress_type = zipfile.ZIP_BZIP2
    entries: list[tuple[str | zipfile.ZipInfo, bytes]] = [(n, d) for n, d in members.items() if n != "codebook.npy"]
    _refused(_zip(tmp_path / "bz.fvl", [*entries, (info, members["codebook.npy"])]), "compression method 12")
    enc = tmp_path / "enc.fvl"
    enc.write_bytes(saved.read_bytes())
    raw = bytearray(enc.read_bytes())
    at = raw.index(b"PK\x01\x02")  # the first central-directory entry: set its "encrypted" flag bit
    struct.pack_into("<H", raw, at + 8, struct.unpack_from("<H", raw, at + 8)[0] | 1)
    enc.write_bytes(bytes(raw))
    _refused(enc, "encrypted")


def _zip64_duplicates(out: Path, n: int) -> Path:
    """A zip whose classic end record declares a model's 6 entries in 100 bytes, and whose zip64 end
    record (which zipfile reads instead) declares ``n`` central-directory entries, all one name."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("format.json", b'{"format": "fastvlad-model", "version": 1}')
    raw = buf.getvalue()
    directory_at, end_at = raw.index(b"PK\x01\x02"), raw.index(b"PK\x05\x06")
    directory = raw[directory_at:end_at] * n
    zip64_end = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, n, n, len(directory), directory_at)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, directory_at + len(directory), 1)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 6, 6, 100, directory_at, 0)
    out.write_bytes(raw[:directory_at] + directory + zip64_end + locator + end)
    return out


def test_a_zip64_end_record_is_refused_before_its_entries_are_read(tmp_path: Path) -> None:
    """zipfile takes the entry count from a zip64 end record: 20,000 entries of one name took 12 s
    to list and check for duplicates (200,000 about 20 minutes) before this was refused."""
    _refused(_zip64_duplicates(tmp_path / "z64.fvl", 20_000), "zip64 end record")


def test_a_member_that_inflates_a_hundredfold_is_refused(saved: Path, tmp_path: Path) -> None:
    """A zip bomb within every size limit: 2.4 MB of zeros deflate to a few kilobytes. A model's
    arrays compress to about 0.9 of their size, its booster to an eighth."""
    zeros = io.BytesIO()
    np.save(zeros, np.zeros((1024, 600), np.float32))
    bomb = model_files.edited(saved, tmp_path / "bomb.fvl", projection_npy=zeros.getvalue())
    _refused(bomb, r"projection.npy inflates \d+ bytes to 2457728, over 100 times")
    with zipfile.ZipFile(saved) as zf:  # the real model's members stay far under the limit
        assert all(i.file_size <= 10 * max(i.compress_size, 1) for i in zf.infolist())


def test_running_out_of_memory_while_reading_is_a_model_error(saved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_memory(path: Path) -> dict[str, bytes]:
        raise MemoryError

    monkeypatch.setattr(model_file, "_read_members", no_memory)
    _refused(saved, "not enough memory to read this model file")


# -- the arrays ----------------------------------------------------------------------------------------
def _npy_header(shape: tuple[int, ...], descr: str = "<f4", fortran: bool = False) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": fortran, "shape": shape})
    return buf.getvalue()


@pytest.mark.parametrize(("npy", "match"), [
    (_npy_header((10**12, 10**12)) + bytes(64), r"float32 array, not float32 \(1000000000000, 1000000000000\)"),
    (_npy_header((8, 64), ">f4") + bytes(8 * 64 * 4), "float32 array, not >f4"),
    (_npy_header((8, 64), "|O") + b"\x80\x04.", "must be a finite 2-D float32|unreadable"),
    (_npy_header((1, 64)) + bytes(64 * 4), "at least 2 centres"),
    (b"\x93NUMPY\x01\x00\xff\xff" + b"{" * 100, "unreadable member codebook.npy"),
    (b"\x93NUMPY\x03\x00", "unreadable member codebook.npy"),
    (_npy_header((-8, -64)) + bytes(8 * 64 * 4), r"float32 array, not float32 \(-8, -64\)"),  # NumPy: "one unknown side"
    (_npy_header((True, 512)) + bytes(512 * 4), r"float32 array, not float32 \(True, 512\)"),
    (_npy_header((8, 64)) + np.full((8, 64), 3e38, "<f4").tobytes(),
     r"codebook.npy holds a value of magnitude 3e\+38, over the 1e\+15"),
])
def test_hostile_codebook_is_refused(saved: Path, tmp_path: Path, npy: bytes, match: str) -> None:
    _refused(model_files.edited(saved, tmp_path / "bad.fvl", codebook_npy=npy), match)


def test_fortran_ordered_arrays_load_c_contiguous(saved: Path, tmp_path: Path) -> None:
    """A file whose arrays are stored in Fortran order loads to the same values, C-contiguous."""
    members = model_files.members_of(saved)
    changed = {}
    for name in ("codebook.npy", "projection.npy"):
        a = np.load(io.BytesIO(members[name]))
        buf = io.BytesIO()
        np.save(buf, np.asfortranarray(a))
        assert b"'fortran_order': True" in buf.getvalue()[:128]
        changed[name.replace(".", "_")] = buf.getvalue()
    loaded = fastvlad.load(model_files.edited(saved, tmp_path / "f.fvl", **changed))
    fitted = tiny_model.fitted()
    assert loaded.codebook_.flags.c_contiguous and loaded.projection_.weight.flags.c_contiguous
    np.testing.assert_array_equal(loaded.codebook_, fitted.codebook_)
    np.testing.assert_array_equal(loaded.projection_.weight, fitted.projection_.weight)


# -- config.json and format.json -------------------------------------------------------------------------
def _config(saved: Path) -> dict[str, Any]:
    return json.loads(model_files.members_of(saved)["config.json"])


def _params(**change: Any) -> Any:
    return lambda c: c["params"].update(change)


CONFIG_EDITS = {
    "k as text": (_params(k="8"), "k='8'"),
    "huge k": (_params(k=10**30), "k=1000000000000000000000000000000"),
    "k not the codebook's": (_params(k=9), "k=9 but codebook.npy has 8 centres"),
    "huge image": (_params(image_size=[10**9, 10**9]), "exceeds the network input limit"),
    "negative batch": (_params(batch_size=-1), "batch_size=-1"),
    "density as a list": (_params(density=[10]), r"density=\[10\]"),
    "device unknown": (_params(device="tpu"), "device='tpu'"),
    "negative ridge strength": (_params(alpha=-1), "alpha=-1"),
    "zoom as text": (_params(zoom="1.4"), "zoom='1.4'"),
    "zoom out of range": (_params(zoom=[1e308]), r"zoom\[0\]=1e\+308"),
    "zoom nested": (_params(zoom=[[1.4]]), r"zoom\[0\]=\[1.4\]"),
    "too many zooms": (_params(zoom=[1.0] * 10**5), "give up to 8 factors"),
    "zoom_jitter as text": (_params(zoom_jitter="no"), r"parameter\(s\) \['zoom_jitter'\] must be true or false"),
    "tta_zoom as text": (_params(tta_zoom="0.7"), "tta_zoom='0.7'"),
    "tta_zoom out of range": (_params(tta_zoom=[0.0]), r"tta_zoom\[0\]=0.0"),
    "tta_zoom too small for the input": (_params(tta_zoom=[0.25], image_size=[32, 32]),
                                         r"tta_zoom=\(0.25,\): image_size × 0.25 = 8×8"),
    "a booster file claiming the ridge head": (_params(classifier="ridge"), "classifier='ridge' needs linear.npy"),
    "intra as text": (_params(intra="yes"), r"\['intra'\] must be true or false"),
    "pca unlike the projection": (_params(pca=32), "pca=32"),
    "unknown parameter": (_params(evil=1), r"unknown parameter\(s\) \['evil'\]"),
    "unknown field": (lambda c: c.update(hook="x"), r"unknown field\(s\) \['hook'\]"),
    "missing classes": (lambda c: c.pop("classes"), r"missing field\(s\) \['classes'\]"),
    "classes not labels": (lambda c: c.update(classes=[{}, [], "c", "d"]), "classes must be a list"),
    "classes of text and numbers": (lambda c: c.update(classes=[1, "b", "c", "d"]), "all names .*, all numbers"),
    "classes of true and 1": (lambda c: c.update(classes=[True, 1, 2, 3]), "all numbers or all true/false"),
    "classes 1 and 1.0": (lambda c: c.update(classes=[1, 1.0, 2, 3]), "distinct labels"),
    "duplicate classes": (lambda c: c.update(classes=["a", "a", "b", "c"]), "distinct"),
    "fewer classes than the booster": (lambda c: c.update(classes=["a", "b", "c"]), "num_class is 4, expected 3"),
    "bad backbone hash": (lambda c: c.update(backbone_sha256="../../etc"), "backbone_sha256 must be 64"),
    "taps not a list": (lambda c: c.update(taps="block1_conv2"), "taps must be a non-empty list"),
    "a tap named twice": (lambda c: c.update(taps=["block1_conv2"] * 5), "names a tap more than once"),
    "taps unlike the taps parameter": (lambda c: c.update(taps=["block1_conv2"]),
                                       r"taps \['block1_conv2'\] are not those of its taps parameter"),
    "a tap the VGG16 has not": (lambda c: (c.update(taps=["block1_conv2", "nope"]),
                                           c["params"].update(taps=["block1_conv2", "nope"])),
                                r"taps \['nope'\] are not tensors of the embedded VGG16"),
    "taps narrower than the projection": (lambda c: (c.update(taps=["block1_conv2"]),
                                                     c["params"].update(taps=["block1_conv2"])),
                                          "its taps give 64-dim hypercolumns but projection.npy takes 1472"),
    "train not an object": (lambda c: c.update(train=[1]), "train and versions must be objects"),
    "explained variance": (lambda c: c["train"].update(pca_explained_variance="all"), "pca_explained_variance"),
    "input scale as text": (lambda c: c["train"].update(input_scale="big"), r"train.input_scale='big' must be"),
    "input scale decreasing": (lambda c: c["train"].update(input_scale=[2.0, 1.0, 0.5]), "positive numbers in order"),
    "input scale zero": (lambda c: c["train"].update(input_scale=[0, 0, 1]), "three positive numbers"),
    "input scale too large for a float": (lambda c: c["train"].update(input_scale=[1, 1, 10**400]),
                                          r"input_scale=\[1, 1, 1000.* must be \[min, median, max\]"),
    "input scale as flags": (lambda c: c["train"].update(input_scale=[True, True, True]), "input_scale"),
    "skipped not pairs": (lambda c: c["train"].update(skipped=[["a.png"]]), r"train.skipped must be a list of \[image"),
    "timings not seconds": (lambda c: c["train"].update(timings={"cnn": "fast"}), "train.timings must map"),
    "params not an object": (lambda c: c.update(params=[]), "params must be an object"),
    "k too large for a float": (_params(k=10**400), r"k=10000000000000000000…\(401 characters\): must be an integer"),
    "density too large for a float": (_params(density=10**400), r"density=1000.*: must be a number"),
    "softness past its range": (_params(softness=1e308), r"softness=1e\+308: must be a number \(0, 1e\+06\]"),
    "an empty class name": (lambda c: c.update(classes=["", "b", "c", "d"]), r"all names \(non-empty"),
    "a class name UTF-8 cannot write": (lambda c: c.update(classes=["\ud800", "b", "c", "d"]), r"all names \(non-empty"),
    "an unknown int8 recipe": (lambda c: c.update(quantized={"sha256": "a" * 64, "calibration_sha256": "b" * 64,
                                                             "recipe": {"method": 5}}), "unknown recipe"),
    "an int8 recipe of the wrong types": (lambda c: c.update(quantized={"sha256": "a" * 64, "calibration_sha256": "b" * 64,
                                                                        "recipe": {"per_channel": "yes"}}),
                                          "unknown recipe"),
}


@pytest.mark.parametrize("name", list(CONFIG_EDITS))
def test_config_edits_are_refused(saved: Path, tmp_path: Path, name: str) -> None:
    edit, match = CONFIG_EDITS[name]
    cfg = _config(saved)
    edit(cfg)
    _refused(model_files.edited(saved, tmp_path / "bad.fvl", config_json=json.dumps(cfg).encode()), match)


def test_a_codebook_narrower_than_the_taps_without_projection_is_refused(saved: Path, tmp_path: Path) -> None:
    """Without projection.npy the codebook takes the whole hypercolumn: a 64-wide one is refused at
    load (it failed at the first encode, naming no model file)."""
    cfg = _config(saved)
    cfg["params"].update(pca=None)
    bad = model_files.edited(saved, tmp_path / "bad.fvl", config_json=json.dumps(cfg).encode(), projection_npy=None)
    _refused(bad, "its taps give 1472-dim hypercolumns but codebook.npy takes 64")


@pytest.fixture(scope="module")
def with_axes(saved: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a ridge head on 5 code axes (``code_pca=5``)."""
    images, labels = tiny_model.demo_images()
    model = tiny_model.fitted_copy(classifier="ridge", code_pca=5)
    model.fit_codes(model.transform(list(images)), labels)
    return model.save(tmp_path_factory.mktemp("axes") / "axes.fvl")


def test_code_axes_edits_are_refused(with_axes: Path, tmp_path: Path) -> None:
    """code_axes.npy is there exactly when code_pca is set, with the shape code_pca and the codes
    give, and finite; linear.npy then has one column per axis."""
    members = model_files.members_of(with_axes)
    cfg = json.loads(members["config.json"])
    axes = np.load(io.BytesIO(members["code_axes.npy"]))
    linear = np.load(io.BytesIO(members["linear.npy"]))
    assert axes.shape == (6, 8 * 64) and linear.shape == (4, 6)

    def npy(a: np.ndarray) -> bytes:
        buf = io.BytesIO()
        np.save(buf, a.astype(np.float32))
        return buf.getvalue()

    def config(**change: Any) -> bytes:
        return json.dumps({**cfg, "params": {**cfg["params"], **change}}).encode()

    nan = axes.copy()
    nan[0, 0] = np.nan
    for name, change, match in [
        ("missing", dict(code_axes_npy=None), "trained with code_pca=5 but has no code_axes.npy"),
        ("without code_pca", dict(config_json=config(code_pca=None)), "code_axes.npy is there but .* code_pca=None"),
        ("with an XGBoost head", dict(config_json=config(classifier="xgboost")),
         "code_axes.npy is there but .* classifier='xgboost', which uses none"),
        ("more axes than code_pca", dict(config_json=config(code_pca=3)), r"code_axes.npy has shape \(6, 512\)"),
        ("narrower than the codes", dict(code_axes_npy=npy(axes[:, :100])), r"code_axes.npy has shape \(6, 100\)"),
        ("not finite", dict(code_axes_npy=npy(nan)), "code_axes.npy must be a finite"),
        ("a head on the codes", dict(linear_npy=npy(np.zeros((4, 513)))), r"linear.npy has shape \(4, 513\).*code axes"),
    ]:
        _refused(model_files.edited(with_axes, tmp_path / f"{name}.fvl", **change), match)


@pytest.mark.parametrize(("text", "match"), [
    (b'{"params": NaN}', "not valid JSON.*NaN is not a JSON number"),
    (b'{"params": 1e999}', "not valid JSON.*out of range"),
    (b'{"params": ' + b"9" * 5000 + b"}", "not valid JSON"),
    (b"[" * 200_000 + b"]" * 200_000, "not valid JSON.*RecursionError"),
    (b'{"params": "\xff"}', "not valid JSON.*UnicodeDecodeError"),
    (b"[]", "config.json must hold a JSON object"),
])
def test_hostile_config_json_is_refused(saved: Path, tmp_path: Path, text: bytes, match: str) -> None:
    _refused(model_files.edited(saved, tmp_path / "bad.fvl", config_json=text), f"config.json.*{match}|{match}")


@pytest.mark.parametrize(("text", "match"), [
    (b"[1, 2]", r"not a fastvlad model \(format 'list'\)"),
    (b'{"format": "fastvlad-model", "version": true}', "version True is not supported"),
    (b'{"format": "fastvlad-model", "version": "1"}', "version '1' is not supported"),
    (b"\xff", "format.json is not JSON"),
])
def test_hostile_format_json_is_refused(saved: Path, tmp_path: Path, text: bytes, match: str) -> None:
    _refused(model_files.edited(saved, tmp_path / "bad.fvl", format_json=text), match)


def test_manifest_must_be_a_table(saved: Path, tmp_path: Path) -> None:
    members = model_files.members_of(saved)
    for text in (b"[]", b'{"config.json": 5}', b"\x00"):
        bad = model_files.write_members(tmp_path / "bad.fvl", {**members, "manifest.json": text}, rehash=False)
        _refused(bad, "manifest")


# -- the backbone the model was trained with ------------------------------------------------------------
def test_a_backbone_with_another_sha256_is_refused(saved: Path, tmp_path: Path) -> None:
    """A model whose recorded backbone SHA-256 is not that of the backbone file it would use is
    refused when it encodes (transform, predict), naming both hashes; the same file with the
    right hash works."""
    images, _ = tiny_model.demo_images()
    cfg = _config(saved)
    real = cfg["backbone_sha256"]
    other = "0123456789abcdef" * 4
    cfg["backbone_sha256"] = other
    model = fastvlad.load(model_files.edited(saved, tmp_path / "other.fvl", config_json=json.dumps(cfg).encode()))
    for use in (model.transform, model.predict, model.predict_proba):
        with pytest.raises(ModelFormatError, match=f"backbone SHA-256 {other[:12]}….* has {real[:12]}…"):
            use([images[0]])
    assert fastvlad.load(saved).transform([images[0]]).shape == (1, model.codebook_.size)


def test_codes_that_overflow_are_a_model_error_not_unreadable_images() -> None:
    """Centres too large for float32 squares made every code NaN, and every image read as
    unreadable (CLI exit 0). The encoder refuses non-finite codes: pixels are finite by then."""
    images, _ = tiny_model.demo_images()
    model = tiny_model.fitted_copy()
    model.codebook_ = np.full_like(model.codebook_, 3e37)
    with pytest.raises(ModelFormatError, match="overflow float32 when encoding"):
        model.predict(list(images[:2]))


def test_a_projection_that_overflows_the_normalisation_is_a_model_error() -> None:
    """A projection of 9e14 (under the load bound of 1e15) made finite residual sums whose squares
    overflow: an infinite norm gave all-zero codes, the same answer for every image, with exit 0."""
    from dataclasses import replace

    images, _ = tiny_model.demo_images()
    model = tiny_model.fitted_copy()
    model.projection_ = replace(model.projection_, weight=np.full_like(model.projection_.weight, 9e14))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no raw RuntimeWarning on the way
        with pytest.raises(ModelFormatError, match="overflow float32 when encoding"):
            model.predict(list(images[:2]))


def test_an_extreme_input_scale_record_gives_a_warning_not_a_crash(saved: Path, tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """A record that passes the load check but is absurd (5e-324: every image looks infinitely too
    large) still predicts, with the scale warning and no NumPy overflow warning."""
    import logging

    cfg = _config(saved)
    cfg["train"]["input_scale"] = [5e-324, 5e-324, 5e-324]  # the smallest float: 1 / it overflows
    model = fastvlad.load(model_files.edited(saved, tmp_path / "tiny.fvl", config_json=json.dumps(cfg).encode()))
    images, _ = tiny_model.demo_images()
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING, logger="fastvlad"):
        warnings.simplefilter("error")
        proba = model.predict_proba(list(images[:2]))
    assert np.isfinite(proba).all()
    assert any("at inf× the scale" in r.getMessage() for r in caplog.records)
