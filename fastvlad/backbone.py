"""The CNN: one ONNX Runtime session whose outputs are the tap feature maps, channels-last.

The default is fastvlad's own VGG16 graph (see ``weights.py``); any ONNX model whose tap
tensors are named works too. A Transpose is appended to every tap inside the graph, so
ONNX Runtime hands back ``(n, h, w, C)`` maps and each sampled pixel's channels are contiguous.

With the CUDA execution provider the taps never visit the host: outputs are bound to the GPU
with IO binding and handed to CuPy through DLPack (zero copy). ``fp16=True`` runs a float16
copy of the graph there (float32 input; float16 taps, which the CUDA kernels widen exactly).
``quantized=PATH`` runs an int8 copy of the graph instead (``quantize.py``; float32 taps).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import config, weights
from .errors import BackboneError, in_one_line

log = logging.getLogger("fastvlad")

DEFAULT_BACKBONE = "vgg16"


def resolve_model(backbone: str | os.PathLike[str]) -> tuple[Path, tuple[str, ...] | None]:
    """``"vgg16"`` → the cached converted model and its taps; a path → itself, taps unknown."""
    if str(backbone) == DEFAULT_BACKBONE:
        return weights.vgg16_path(), weights.VGG16_TAPS
    if not os.fspath(backbone):
        raise BackboneError("backbone '': an empty path; use 'vgg16' or a path to a .onnx model")
    path = Path(backbone)
    if not os.path.isfile(path):  # os.path: False, not an OSError, for a name too long
        what = "not a regular file (a folder, pipe or device)" if os.path.lexists(path) else "no such ONNX file"
        raise BackboneError(f"backbone {str(backbone)!r}: {what}; use 'vgg16' or a path to a .onnx model")
    return path, None


def check_taps(graph: Any, taps: Sequence[str], path: object = None) -> None:
    """``BackboneError`` naming the ``taps`` that are not tensors of the ONNX ``graph`` (of the file
    ``path``), with some that are."""
    produced = {o for node in graph.node for o in node.output} | {i.name for i in graph.input}
    missing = [t for t in taps if t not in produced]
    if missing:
        available = [o for node in graph.node for o in node.output if node.op_type in ("Relu", "Conv", "Clip")]
        where = f"{path}: " if path is not None else ""
        raise BackboneError(f"{where}taps {missing} are not tensors of this model; some that are: {available[:12]}")


def _with_channels_last_taps(model, taps: Sequence[str]):  # type: ignore[no-untyped-def]
    """The model with outputs replaced by ``<tap>:nhwc`` = Transpose(tap, NCHW→NHWC)."""
    import onnx
    from onnx import helper

    graph = model.graph
    check_taps(graph, taps)
    del graph.output[:]
    for tap in taps:
        graph.node.append(helper.make_node("Transpose", [tap], [f"{tap}:nhwc"], perm=[0, 2, 3, 1]))
        graph.output.append(helper.make_tensor_value_info(f"{tap}:nhwc", onnx.TensorProto.FLOAT, None))
    return model


def _as_float16(model):  # type: ignore[no-untyped-def]
    """The model computing in float16: float initializers and Constant tensors converted, the
    float32 input cast on entry, the outputs declared float16. Intermediate type annotations are
    dropped (ONNX Runtime infers them again)."""
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    float_type = onnx.TensorProto.FLOAT

    def half(t):  # type: ignore[no-untyped-def]
        if t.data_type != float_type:
            return t
        converted = numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name)
        t.CopyFrom(converted)
        return t

    for init in graph.initializer:
        half(init)
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                half(attr.t)
    source = graph.input[0].name
    cast_name = f"{source}:fp16"
    for node in graph.node:
        node.input[:] = [cast_name if i == source else i for i in node.input]
    graph.node.insert(0, helper.make_node("Cast", [source], [cast_name], to=onnx.TensorProto.FLOAT16))
    del graph.value_info[:]
    for out in graph.output:
        out.type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    return model


def _to_cupy(value):  # type: ignore[no-untyped-def]
    """A CUDA OrtValue as a CuPy array sharing its memory (which the array keeps alive)."""
    import cupy

    if hasattr(value, "__dlpack__"):  # ONNX Runtime ≥ 1.22
        return cupy.from_dlpack(value)
    # Older ONNX Runtime: wrap the device pointer; ``owner`` holds the OrtValue, so ORT's buffer
    # lives as long as the array.
    import onnx

    dtype = np.dtype(np.float16 if value.element_type() == onnx.TensorProto.FLOAT16 else np.float32)
    shape = tuple(int(d) for d in value.shape())
    memory = cupy.cuda.UnownedMemory(value.data_ptr(), int(np.prod(shape)) * dtype.itemsize, value)
    return cupy.ndarray(shape, dtype, cupy.cuda.MemoryPointer(memory, 0))


class Backbone:
    """An ONNX Runtime session producing the taps of a batch.

    ``backbone``: ``"vgg16"`` (default weights) or a path to an ONNX model with NCHW float
    input. ``taps``: names of 4-D NCHW tensors in that model. ``providers``: ONNX Runtime
    execution providers, in order of preference. ``fp16``: run a float16 copy of the graph
    (meant for the CUDA provider; taps come back float16). ``quantized``: the path of an int8
    copy of the graph (``quantize.build``) to run instead; ``sha256`` stays the float graph's,
    ``graph_sha256`` is the one that runs.
    """

    def __init__(self, backbone: str | os.PathLike[str] = DEFAULT_BACKBONE, taps: Sequence[str] | None = None,
                 providers: Sequence[str] = ("CPUExecutionProvider",), threads: int | None = None,
                 fp16: bool = False, quantized: str | os.PathLike[str] | None = None) -> None:
        import onnx
        import onnxruntime as ort

        path, default_taps = resolve_model(backbone)
        self.path = path
        self.taps = tuple(taps or default_taps or ())
        if not self.taps:
            raise BackboneError(f"{path}: name the tap tensors of this model (taps=[...] / --taps a,b,c)")
        self.sha256 = weights.file_sha256(path)
        graph = Path(quantized) if quantized is not None else path
        self.graph_sha256 = weights.file_sha256(graph) if quantized is not None else self.sha256
        self.precision = "int8" if quantized is not None else "fp16" if fp16 else "fp32"
        if fp16 and quantized is not None:
            raise BackboneError("a backbone runs at float16 or from an int8 graph, not both (fp16 with quantized)")
        try:
            model = onnx.load(str(graph))
        except Exception as exc:
            raise BackboneError(f"{graph}: not a readable ONNX model ({in_one_line(exc)})") from None
        if not model.graph.input:  # an empty file parses as an empty model
            raise BackboneError(f"{graph}: not a readable ONNX model (its graph has no input; a backbone takes "
                                "images (n, 3, H, W))")
        #: The graph's metadata (an int8 copy names what it was built from: ``quantize.record_of``).
        self.metadata = {p.key: p.value for p in model.metadata_props}
        self.input_name = model.graph.input[0].name
        model = _with_channels_last_taps(model, self.taps)
        self.fp16 = fp16
        if fp16:
            model = _as_float16(model)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or config.usable_cores()
        # Spinning ORT threads would steal the cores from Numba and BLAS between batches.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(model.SerializeToString(), opts, providers=list(providers))
        except Exception as exc:
            raise BackboneError(f"{path}: ONNX Runtime cannot load the model ({in_one_line(exc)})") from None
        self.providers = tuple(self.session.get_providers())
        self._outputs = [f"{t}:nhwc" for t in self.taps]
        self._dims: tuple[int, ...] | None = None
        self.on_gpu = self.providers[0] == "CUDAExecutionProvider"
        options = self.session.get_provider_options().get("CUDAExecutionProvider", {})
        self._device_id = int(options.get("device_id", 0))

    def __call__(self, pixels: np.ndarray) -> list:  # type: ignore[type-arg]
        """(n, 3, H, W) float32 → one (n, h_l, w_l, C_l) array per tap: NumPy float32 on the CPU,
        CuPy on the GPU (float16 with ``fp16``)."""
        try:
            if self.on_gpu:
                return self._run_bound(pixels)
            return self.session.run(self._outputs, {self.input_name: pixels})
        except Exception as exc:  # the message keeps ORT's text: errors.is_gpu_out_of_memory reads it
            raise BackboneError(f"{self.path}: inference failed on a batch of shape {pixels.shape} "
                                f"({in_one_line(exc)})") from None

    def _run_bound(self, pixels: np.ndarray, device: str = "cuda") -> list:  # type: ignore[type-arg]
        """IO binding: the batch is copied in once, the taps stay in ``device`` memory (no
        copy_outputs_to_cpu) and reach CuPy through DLPack. ``device="cpu"`` exists for the tests,
        which run this path on ONNX Runtime's CPU build with NumPy standing in for CuPy."""
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.input_name, np.ascontiguousarray(pixels, dtype=np.float32))
        for name in self._outputs:
            binding.bind_output(name, device, self._device_id)
        self.session.run_with_iobinding(binding)  # synchronises the provider's stream before returning
        return [_to_cupy(v) for v in binding.get_outputs()]

    @property
    def dims(self) -> tuple[int, ...]:
        """Channels of every tap (runs the model once on a small input the first time)."""
        if self._dims is None:
            self._dims = tuple(m.shape[3] for m in self(np.zeros((1, 3, 32, 32), np.float32)))
        return self._dims


_SHARED: dict[tuple[Any, ...], Backbone] = {}
_SHARED_LOCK = threading.Lock()
#: Sessions kept open at once (each holds its weights, ~60 MB for VGG16, and ONNX Runtime's arena).
SHARED_SESSIONS = 4


def open_shared(backbone: str | os.PathLike[str] = DEFAULT_BACKBONE, taps: Sequence[str] | None = None,
                providers: Sequence[str] = ("CPUExecutionProvider",), fp16: bool = False,
                threads: int | None = None, quantized: str | os.PathLike[str] | None = None) -> Backbone:
    """A ``Backbone`` shared by every caller in this process that asks for the same one: threads
    predicting with one model, models with one backbone, the partitions a Dask worker runs. The
    model file's size and modification time are part of the key, so an edited file is opened anew."""
    path, _ = resolve_model(backbone)
    st = path.stat()
    q = None
    if quantized is not None:  # the int8 copy's identity too: a rebuilt copy is opened anew
        qs = Path(quantized).stat()
        q = (str(quantized), qs.st_size, qs.st_mtime_ns)
    key = (str(path), st.st_size, st.st_mtime_ns, tuple(taps or ()), tuple(providers), bool(fp16), threads, q)
    with _SHARED_LOCK:
        shared = _SHARED.pop(key, None)
        if shared is None:
            shared = Backbone(backbone, taps, providers, threads=threads, fp16=fp16, quantized=quantized)
        _SHARED[key] = shared  # most recently used last
        while len(_SHARED) > SHARED_SESSIONS:
            _SHARED.pop(next(iter(_SHARED)))
        return shared
