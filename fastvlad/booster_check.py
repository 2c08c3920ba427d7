"""The booster of a model file, checked in Python before XGBoost parses it.

XGBoost's model parser trusts its input: one flipped byte in a UBJSON model (with the manifest
re-hashed) can crash the process with a segmentation fault. So ``checked`` parses the member
here, with a strict UBJSON decoder that refuses anything a model does not need; checks the model
against the structure fastvlad trains (a gbtree of ``multi:softprob`` trees, no categorical
splits, the expected class count and code width, every tree's arrays of one length, children
and parents that form a tree, split features in range, finite numbers); and returns the model
encoded again by ``encode``. XGBoost then parses bytes written here from checked values, never
the file's own bytes, so a difference between this decoder and XGBoost's cannot smuggle anything
past the checks.

Models of XGBoost 2 and 3 pass (the fields either writes); anything else is a ``BoosterError``
whose message names the field and the problem.
"""

from __future__ import annotations

import functools
import math
import re
import struct
from typing import Any

import numpy as np

#: Deepest nesting of UBJSON containers accepted (an XGBoost model needs 6).
MAX_DEPTH = 16
#: Typed-array element markers and their big-endian NumPy types.
_TYPED = {"i": ">i1", "U": ">u1", "I": ">i2", "l": ">i4", "L": ">i8", "d": ">f4", "D": ">f8"}
_INT_MARKERS = {"i": ">i1", "U": ">u1", "I": ">i2", "l": ">i4", "L": ">i8"}
_ROOT_PARENT = (2**31 - 1, -1)  # XGBoost writes kInvalidNodeId for the root's parent


class BoosterError(ValueError):
    """The booster member is not a model fastvlad could have written; the message says why."""


# -- UBJSON ------------------------------------------------------------------------------------
_Q = struct.Struct(">q")
_SCALAR = {m: struct.Struct(t.replace("i1", "b").replace("u1", "B").replace("i2", "h").replace("i4", "i")
                            .replace("i8", "q").replace("f4", "f").replace("f8", "d")) for m, t in _TYPED.items()}


class Typed:
    """A UBJSON typed array, kept as its raw big-endian bytes (``marker``: the element type);
    ``array()`` views it as NumPy. Checks join many of them before looking (one NumPy call per
    field, not per tree), and ``encode`` writes the bytes back unchanged."""

    __slots__ = ("marker", "raw")

    def __init__(self, marker: str, raw: bytes) -> None:
        self.marker, self.raw = marker, raw

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(_TYPED[self.marker])

    def __len__(self) -> int:
        return len(self.raw) // self.dtype.itemsize

    def array(self) -> np.ndarray:
        return np.frombuffer(self.raw, self.dtype)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Typed) and (self.marker, self.raw) == (other.marker, other.raw)


class _Decoder:
    """Strict UBJSON (the subset XGBoost writes): no no-op, high-precision or char markers,
    no duplicate keys, no bytes after the value; counts bounded by the bytes left."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def fail(self, problem: str) -> BoosterError:
        return BoosterError(f"{problem} at byte {self.pos} (not an XGBoost UBJSON model)")

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(f"{n} bytes needed, {len(self.data) - self.pos} left")
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def marker(self) -> str:
        if self.pos >= len(self.data):
            raise self.fail("1 bytes needed, 0 left")
        self.pos += 1
        return chr(self.data[self.pos - 1])

    def scalar(self, m: str) -> Any:
        fmt = _SCALAR[m]
        if self.pos + fmt.size > len(self.data):
            raise self.fail(f"{fmt.size} bytes needed, {len(self.data) - self.pos} left")
        self.pos += fmt.size
        return fmt.unpack_from(self.data, self.pos - fmt.size)[0]

    def integer(self, m: str) -> int:
        if m not in _INT_MARKERS:
            raise self.fail(f"integer expected, found marker {m!r}")
        return int(self.scalar(m))

    def length(self) -> int:
        n = self.integer(self.marker())
        if n < 0 or n > len(self.data) - self.pos:
            raise self.fail(f"length {n} exceeds the {len(self.data) - self.pos} bytes left")
        return n

    def text(self) -> str:
        try:
            return self.take(self.length()).decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail("a string that is not UTF-8") from None

    def value(self, m: str, depth: int) -> Any:
        if m == "[":  # the common containers first
            if depth >= MAX_DEPTH:
                raise self.fail(f"containers nested deeper than {MAX_DEPTH}")
            return self.array(depth + 1)
        if m in _INT_MARKERS:
            return self.integer(m)
        if m == "d":
            return np.float32(self.scalar(m))
        if m == "D":
            return float(self.scalar(m))
        if m == "S":
            return self.text()
        if m in "TF":
            return m == "T"
        if m == "Z":
            return None
        if m in "[{":
            if depth >= MAX_DEPTH:
                raise self.fail(f"containers nested deeper than {MAX_DEPTH}")
            return self.array(depth + 1) if m == "[" else self.object(depth + 1)
        raise self.fail(f"marker {m!r} is not used by XGBoost models")

    def array(self, depth: int) -> Any:
        data, pos = self.data, self.pos
        if data[pos : pos + 1] == b"$" and data[pos + 2 : pos + 4] == b"#L" and chr(data[pos + 1]) in _TYPED \
                and pos + 12 <= len(data):  # "$" type "#L" int64 count: how XGBoost writes its arrays
            kind, count = chr(data[pos + 1]), _Q.unpack_from(data, pos + 4)[0]
            self.pos += 12
            if count < 0 or count * _SCALAR[kind].size > len(data) - self.pos:
                raise self.fail(f"typed array of {count} values exceeds the bytes left")
            return Typed(kind, self.take(count * _SCALAR[kind].size))
        m = self.marker()
        if m == "$":  # typed: "$" type "#" count, then the raw big-endian values
            kind = self.marker()
            if kind not in _TYPED or self.marker() != "#":
                raise self.fail(f"typed array of {kind!r}")
            size = _SCALAR[kind].size
            count = self.integer(self.marker())
            if count < 0 or count * size > len(self.data) - self.pos:
                raise self.fail(f"typed array of {count} values exceeds the bytes left")
            return Typed(kind, self.take(count * size))
        if m == "#":  # counted: each element has its marker, no closing bracket
            return [self.value(self.marker(), depth) for _ in range(self.length())]
        items = []
        while m != "]":
            items.append(self.value(m, depth))
            m = self.marker()
        return items

    def object(self, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        m = self.marker()
        if m in "$#":
            raise self.fail("typed or counted objects are not used by XGBoost models")
        data = self.data
        while m != "}":
            if m == "L" and self.pos + 8 <= len(data):  # XGBoost's key lengths: the fast path
                n = _Q.unpack_from(data, self.pos)[0]
                if 0 <= n <= len(data) - self.pos - 8:
                    self.pos += 8 + n
                    try:
                        key = data[self.pos - n : self.pos].decode("utf-8")
                    except UnicodeDecodeError:
                        raise self.fail("a key that is not UTF-8") from None
                else:
                    raise self.fail(f"key length {n} exceeds the bytes left")
            else:
                self.pos -= 1  # the marker was the key length's integer marker
                key = self.text()
            if key in out:
                raise self.fail(f"duplicate key {key!r}")
            out[key] = self.value(self.marker(), depth)
            m = self.marker()
        return out


def decode(data: bytes) -> Any:
    """Parse UBJSON: objects → dict, typed arrays → ``Typed``, counted/plain arrays → list,
    ``d`` → numpy.float32, ``D`` → float. Raises ``BoosterError``."""
    dec = _Decoder(bytes(data))
    out = dec.value(dec.marker(), 0)
    if dec.pos != len(dec.data):
        raise dec.fail(f"{len(dec.data) - dec.pos} bytes after the model")
    return out


def _int_bytes(v: int) -> bytes:
    for m, fmt, lo, hi in (("i", ">b", -128, 127), ("I", ">h", -(2**15), 2**15 - 1), ("l", ">i", -(2**31), 2**31 - 1)):
        if lo <= v <= hi:
            return m.encode() + struct.pack(fmt, v)
    return b"L" + _Q.pack(v)


@functools.lru_cache(maxsize=256)  # object keys repeat in every tree
def _text_bytes(s: str) -> bytes:
    raw = s.encode("utf-8")
    return b"L" + _Q.pack(len(raw)) + raw


def encode(obj: Any) -> bytes:
    """UBJSON of ``decode``'s output (typed arrays keep their element type and bytes)."""
    out: list[bytes] = []

    def put(v: Any) -> None:
        if isinstance(v, dict):
            out.append(b"{")
            for k, item in v.items():
                out.append(_text_bytes(k))
                put(item)
            out.append(b"}")
        elif isinstance(v, Typed):
            out.append(b"[$" + v.marker.encode() + b"#L" + _Q.pack(len(v)) + v.raw)
        elif isinstance(v, list):
            out.append(b"[#L" + _Q.pack(len(v)))
            for item in v:
                put(item)
        elif isinstance(v, str):
            out.append(b"S" + _text_bytes(v))
        elif isinstance(v, bool):
            out.append(b"T" if v else b"F")
        elif v is None:
            out.append(b"Z")
        elif isinstance(v, np.float32):
            out.append(b"d" + struct.pack(">f", float(v)))
        elif isinstance(v, float):
            out.append(b"D" + struct.pack(">d", v))
        elif isinstance(v, int):
            out.append(_int_bytes(v))
        else:
            raise TypeError(f"cannot encode {type(v).__name__}")

    put(obj)
    return b"".join(out)


# -- the model's structure -----------------------------------------------------------------------
_UINT = re.compile(r"[0-9]{1,10}")
_FLOAT_FIELDS = ("base_weights", "loss_changes", "split_conditions", "sum_hessian")
_INT_FIELDS = ("default_left", "left_children", "parents", "right_children", "split_indices", "split_type")
_CATEGORY_FIELDS = ("categories", "categories_nodes", "categories_segments", "categories_sizes")
_TREE_KEYS = {*_FLOAT_FIELDS, *_INT_FIELDS, *_CATEGORY_FIELDS, "id", "tree_param"}


def _obj(v: Any, where: str, required: set[str], optional: frozenset[str] = frozenset()) -> dict[str, Any]:
    """``v`` as an object with all of ``required`` and nothing beyond ``optional``."""
    if not isinstance(v, dict):
        raise BoosterError(f"{where} must be an object, not {type(v).__name__}")
    missing = sorted(required - set(v))
    extra = sorted(set(v) - required - optional)
    if missing:
        raise BoosterError(f"{where} lacks {missing}")
    if extra:
        raise BoosterError(f"{where} has unexpected field(s) {extra} (fastvlad reads models of XGBoost 2 and 3)")
    return v


def _uint(v: Any, where: str) -> int:
    """An XGBoost parameter: a decimal string of a non-negative integer."""
    if not isinstance(v, str) or not _UINT.fullmatch(v):
        raise BoosterError(f"{where} must be a decimal integer string, not {v!r}")
    return int(v)


def _equal(v: Any, where: str, expected: int) -> None:
    if _uint(v, where) != expected:
        raise BoosterError(f"{where} is {v}, expected {expected}")


def _strings(v: Any, where: str, max_items: int = 0) -> None:
    if not isinstance(v, list) or len(v) > max_items or not all(isinstance(s, str) for s in v):
        raise BoosterError(f"{where} must be a list of at most {max_items} strings")


def _typed(tree: dict[str, Any], name: str, where: str, kind: str, n: int) -> Typed:
    a = tree[name]
    if not isinstance(a, Typed) or a.dtype.kind not in kind or len(a) != n:
        got = f"{a.dtype} × {len(a)}" if isinstance(a, Typed) else type(a).__name__
        raise BoosterError(f"{where}.{name} must be a typed array of {n} {'floats' if kind == 'f' else 'integers'}, "
                           f"not {got}")
    return a


def _base_score(v: Any, n_classes: int) -> None:
    """``"5E-1"`` (XGBoost 2) or ``"[a,b,…]"`` with one value per class (XGBoost 3), all finite."""
    if not isinstance(v, str) or len(v) > 64 * max(1, n_classes):
        raise BoosterError(f"learner_model_param.base_score must be a short string, not {type(v).__name__}")
    parts = v[1:-1].split(",") if v.startswith("[") and v.endswith("]") else [v]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise BoosterError(f"learner_model_param.base_score {v[:80]!r} is not numbers") from None
    if len(values) not in (1, n_classes) or not all(math.isfinite(x) for x in values):
        raise BoosterError(f"learner_model_param.base_score {v[:80]!r}: expected 1 or {n_classes} finite numbers")


def _tree_fields(tree: Any, index: int, n_features: int) -> int:
    """The per-tree fields (keys, id, tree_param, array types and lengths): the tree's node count."""
    where = f"tree {index}"
    tree = _obj(tree, where, _TREE_KEYS)
    if not isinstance(tree["id"], int) or isinstance(tree["id"], bool) or tree["id"] != index:
        raise BoosterError(f"{where}.id is {tree['id']!r}, expected {index}")
    param = _obj(tree["tree_param"], f"{where}.tree_param", {"num_deleted", "num_feature", "num_nodes",
                                                              "size_leaf_vector"})
    _equal(param["num_deleted"], f"{where}.tree_param.num_deleted", 0)
    _equal(param["num_feature"], f"{where}.tree_param.num_feature", n_features)
    if _uint(param["size_leaf_vector"], f"{where}.tree_param.size_leaf_vector") > 1:
        raise BoosterError(f"{where} has vector leaves (size_leaf_vector {param['size_leaf_vector']})")
    n = _uint(param["num_nodes"], f"{where}.tree_param.num_nodes")
    if not 1 <= n < 2**31 - 1:
        raise BoosterError(f"{where} has {n} nodes")
    for name in _FLOAT_FIELDS:
        _typed(tree, name, where, "f", n)
    for name in _INT_FIELDS:
        _typed(tree, name, where, "iu", n)
    for name in _CATEGORY_FIELDS:
        if len(_typed(tree, name, where, "iu", 0)):
            raise BoosterError(f"{where}.{name}: fastvlad trains no categorical splits")
    return n


def _joined(trees: list[dict[str, Any]], name: str) -> np.ndarray:
    """Field ``name`` of every tree, end to end (one NumPy array; int64 or float64)."""
    arrays = [t[name] for t in trees]
    if len({a.marker for a in arrays}) == 1:  # the usual case: one dtype, one join
        return np.frombuffer(b"".join(a.raw for a in arrays), arrays[0].dtype).astype(
            np.float64 if arrays[0].dtype.kind == "f" else np.int64)
    return np.concatenate([a.array().astype(np.float64 if a.dtype.kind == "f" else np.int64) for a in arrays])


def _first_bad_tree(bad: np.ndarray, starts: np.ndarray) -> int:
    return int(np.searchsorted(starts, np.flatnonzero(bad)[0], side="right") - 1)


def _trees(trees: list[Any], n_features: int) -> None:
    """Every tree's fields, then their arrays all at once: finite values, numerical splits on
    features < ``n_features``, and children that come after their parent, each node (but the root)
    the child of exactly one node, ``parents`` matching."""
    sizes = np.array([_tree_fields(t, i, n_features) for i, t in enumerate(trees)], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    tree_of = np.repeat(np.arange(len(trees)), sizes)
    local = np.arange(int(sizes.sum())) - starts[tree_of]  # each node's index within its tree
    for name in _FLOAT_FIELDS:
        bad = ~np.isfinite(_joined(trees, name))
        if bad.any():
            raise BoosterError(f"tree {_first_bad_tree(bad, starts)}.{name} holds NaN or infinite values")

    def refuse(bad: np.ndarray, problem: str) -> None:
        if bad.any():
            raise BoosterError(f"tree {_first_bad_tree(bad, starts)}{problem}")

    left, right = _joined(trees, "left_children"), _joined(trees, "right_children")
    parents, features = _joined(trees, "parents"), _joined(trees, "split_indices")
    default_left, split_type = _joined(trees, "default_left"), _joined(trees, "split_type")
    refuse(split_type != 0, ".split_type: fastvlad trains numerical splits only")
    refuse((default_left != 0) & (default_left != 1), ".default_left must hold 0 or 1")
    refuse((features < 0) | (features >= n_features), f".split_indices must lie in [0, {n_features}): the code width")
    leaf = left == -1
    refuse(leaf != (right == -1), ": a node has one child (left and right children disagree on -1)")
    n_of = sizes[tree_of]
    # Children come after their parent, so prediction walks each tree in finite steps.
    for name, child in (("left_children", left), ("right_children", right)):
        refuse(~leaf & ((child <= local) | (child >= n_of)), f".{name} must be -1 or a later node of the tree")
    inner = ~leaf
    children = np.concatenate([(left + starts[tree_of])[inner], (right + starts[tree_of])[inner]])
    times_a_child = np.bincount(children, minlength=len(local))
    refuse(times_a_child != (local != 0), ": every node but the root must be the child of exactly one node")
    refuse((local == 0) & ~np.isin(parents, _ROOT_PARENT), ".parents do not match the children (root)")
    owner = np.concatenate([np.flatnonzero(inner), np.flatnonzero(inner)])  # the global index of each child's parent
    wrong = np.zeros(len(local), dtype=bool)
    wrong[children] = parents[children] != local[owner]
    refuse(wrong, ".parents do not match the children")


def check(model: Any, n_classes: int, n_features: int) -> None:
    """Raise ``BoosterError`` unless ``model`` (``decode``'s output) is a gbtree ``multi:softprob``
    model for ``n_classes`` classes on ``n_features`` features, in the structure XGBoost writes."""
    top = _obj(model, "the model", {"learner", "version"})
    version = top["version"]
    if not isinstance(version, list) or len(version) != 3 or not all(isinstance(v, int) for v in version):
        raise BoosterError(f"version must be three integers, not {version!r}")
    learner = _obj(top["learner"], "learner", {"feature_names", "feature_types", "gradient_booster",
                                               "learner_model_param", "objective"}, frozenset({"attributes"}))
    attributes = learner.get("attributes", {})
    if not isinstance(attributes, dict) or len(attributes) > 64 or not all(
            isinstance(v, str) and len(v) < 4096 for v in attributes.values()):
        raise BoosterError("learner.attributes must map names to short strings")
    _strings(learner["feature_names"], "learner.feature_names")  # fastvlad names no features
    _strings(learner["feature_types"], "learner.feature_types")
    lmp = _obj(learner["learner_model_param"], "learner_model_param", {"base_score", "num_class", "num_feature"},
               frozenset({"num_target", "boost_from_average"}))
    _equal(lmp["num_class"], "learner_model_param.num_class", n_classes)
    _equal(lmp["num_feature"], "learner_model_param.num_feature (the code width)", n_features)
    if "num_target" in lmp:
        _equal(lmp["num_target"], "learner_model_param.num_target", 1)
    if "boost_from_average" in lmp and _uint(lmp["boost_from_average"], "learner_model_param.boost_from_average") > 1:
        raise BoosterError("learner_model_param.boost_from_average must be 0 or 1")
    _base_score(lmp["base_score"], n_classes)
    objective = _obj(learner["objective"], "objective", {"name", "softmax_multiclass_param"})
    if objective["name"] != "multi:softprob":
        raise BoosterError(f"objective {objective['name']!r}: fastvlad trains multi:softprob")
    _equal(_obj(objective["softmax_multiclass_param"], "softmax_multiclass_param", {"num_class"})["num_class"],
           "softmax_multiclass_param.num_class", n_classes)
    gb = _obj(learner["gradient_booster"], "gradient_booster", {"name", "model"})
    if gb["name"] != "gbtree":
        raise BoosterError(f"gradient_booster {gb['name']!r}: fastvlad trains gbtree")
    gbm = _obj(gb["model"], "gradient_booster.model", {"gbtree_model_param", "trees", "tree_info"},
               frozenset({"iteration_indptr", "cats"}))
    gp = _obj(gbm["gbtree_model_param"], "gbtree_model_param", {"num_trees", "num_parallel_tree"})
    _equal(gp["num_parallel_tree"], "gbtree_model_param.num_parallel_tree", 1)
    trees = gbm["trees"]
    if not isinstance(trees, list) or not trees:
        raise BoosterError("gradient_booster.model.trees must be a non-empty list")
    _equal(gp["num_trees"], "gbtree_model_param.num_trees", len(trees))
    info = gbm["tree_info"]
    info = info.array().tolist() if isinstance(info, Typed) else info
    info_ok = isinstance(info, list) and len(info) == len(trees) and all(
        isinstance(c, (int, np.integer)) and not isinstance(c, bool) and 0 <= c < n_classes for c in info)
    if not info_ok:
        raise BoosterError(f"tree_info must give each of the {len(trees)} trees a class in [0, {n_classes})")
    if "iteration_indptr" in gbm:
        ptr = gbm["iteration_indptr"]
        ptr = ptr.array().tolist() if isinstance(ptr, Typed) else ptr
        ok = isinstance(ptr, list) and len(ptr) >= 2 and all(
            isinstance(p, (int, np.integer)) and not isinstance(p, bool) for p in ptr)
        steps = np.diff(np.asarray(ptr, dtype=np.int64)) if ok else None
        if not ok or ptr[0] != 0 or ptr[-1] != len(trees) or steps is None or (steps != n_classes).any():
            raise BoosterError(f"iteration_indptr must run from 0 to {len(trees)} in steps of {n_classes}")
    if "cats" in gbm:
        cats = gbm["cats"]
        if not isinstance(cats, dict) or any(not isinstance(v, (list, Typed)) or len(v) for v in cats.values()):
            raise BoosterError("gradient_booster.model.cats: fastvlad trains no categorical features")
    _trees(trees, n_features)


def checked(data: bytes, n_classes: int, n_features: int) -> bytes:
    """The booster member ``data`` (XGBoost UBJSON) checked by ``check`` and encoded again: the
    bytes to give XGBoost. Raises ``BoosterError`` naming the problem."""
    model = decode(data)
    check(model, n_classes, n_features)
    return encode(model)
