"""Dask scale-out against the local path, on a LocalCluster of two worker processes on 127.0.0.1:
same codebook, same codes, same predictions; a worker killed mid-encoding; unreadable files."""

from __future__ import annotations

import copy
import csv
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")
pytest.importorskip("xgboost.dask")

from distributed import Client
from typer.testing import CliRunner

from fastvlad import datasets, distributed, load, quantize
from fastvlad.cli import app
from fastvlad.errors import DistributedError, ImageReadError, ParameterError
from fastvlad.estimator import FastVLAD

from .conftest import small_model_params

# A second scheduler on the machine moves its HTTP port off 8787, with a warning.
pytestmark = [pytest.mark.timeout(180), pytest.mark.filterwarnings("ignore:Port 8787 is already in use")]
SMALL = ["--density", "0.1", "-k", "8", "--image-size", "64"]


@pytest.fixture(scope="module")
def client(vgg16_path: Path):  # type: ignore[no-untyped-def]
    with distributed.local_cluster(2, device="cpu") as cluster, Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def data(demo_folder: Path) -> tuple[list[str], np.ndarray]:
    ds = datasets.load(demo_folder)
    return [str(p) for p in ds.paths], np.asarray(ds.labels)


@pytest.fixture(scope="module")
def local_model(data: tuple[list[str], np.ndarray], vgg16_path: Path) -> FastVLAD:
    return FastVLAD(**small_model_params()).fit(*data)


@pytest.fixture(scope="module")
def local_codes(data: tuple[list[str], np.ndarray], local_model: FastVLAD) -> np.ndarray:
    """The local path's codes of the 16 demo images: the oracle."""
    return local_model.transform(data[0])


@pytest.fixture(scope="module")
def dask_model(client: Client, data: tuple[list[str], np.ndarray]) -> FastVLAD:
    """Fitted on the cluster, with 3 images per partition."""
    return distributed.fit(client, *data, FastVLAD(**small_model_params()), partition_size=3)


@pytest.fixture
def broken(tmp_path: Path) -> str:
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n not really a PNG")
    return str(path)


def test_fit_encode_predict_match_the_local_path(client: Client, data: tuple[list[str], np.ndarray],
                                                 local_model: FastVLAD, local_codes: np.ndarray, dask_model: FastVLAD,
                                                 tmp_path: Path) -> None:
    paths, model = data[0], dask_model
    # The same sampled points in the same order give the same k-means centres, bit for bit.
    np.testing.assert_array_equal(model.codebook_, local_model.codebook_)
    assert model.backbone_sha256_ == local_model.backbone_sha256_ and model.taps_ == local_model.taps_
    assert model.train_info_["n_images"] == len(paths) and model.train_info_["partitions"] == 6
    assert model.train_info_["input_scale"] == local_model.train_info_["input_scale"]  # what predict checks

    enc = distributed.encode(client, paths, model, partition_size=5)
    np.testing.assert_array_equal(enc.indices, np.arange(len(paths)))
    # Points are seeded by image content, so partitioning cannot change a code.
    np.testing.assert_allclose(enc.codes, local_codes, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(enc.scales, local_model.encode(paths).scales)

    proba, skipped = distributed.predict_proba(client, paths, model, partition_size=4)
    assert skipped == []
    # Stated tolerance: xgboost.dask may place quantile cuts differently from a local
    # QuantileDMatrix on larger data; on this data the boosters give the same probabilities.
    # With the model's tta (the image and its mirror), as the local predict_proba averages them.
    assert model.tta == 1
    np.testing.assert_allclose(proba, local_model.predict_proba(paths), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(model.classes_, local_model.classes_)
    # With a view at 0.75 times the input size as well (tta_zoom), made on the workers.
    zoomed, local_zoomed = (copy.copy(m).set_params(tta_zoom=(0.75,)) for m in (model, local_model))
    proba_zoomed, _ = distributed.predict_proba(client, paths, zoomed, partition_size=4)
    np.testing.assert_allclose(proba_zoomed, local_zoomed.predict_proba(paths), rtol=0, atol=1e-5)
    assert not np.allclose(proba_zoomed, proba, rtol=0, atol=1e-4)

    # The same kind of model file as a local fit.
    reloaded = load(model.save(tmp_path / "m.fvl"))
    np.testing.assert_allclose(reloaded.predict_proba(paths), proba, rtol=0, atol=1e-6)


def test_unreadable_file_surfaces_as_image_read_error(client: Client, data: tuple[list[str], np.ndarray],
                                                      local_model: FastVLAD, local_codes: np.ndarray,
                                                      broken: str) -> None:
    paths = [*data[0][:5], broken, *data[0][5:]]
    with pytest.raises(ImageReadError, match="broken.png") as info:
        distributed.encode(client, paths, local_model, partition_size=3)
    assert type(info.value) is ImageReadError and info.value.source == broken
    with pytest.raises(ImageReadError, match="broken.png"):  # found by the header check before the CNN runs
        distributed.fit_codebook(client, paths, FastVLAD(**small_model_params()), partition_size=3)

    skipping = FastVLAD(**small_model_params(on_error="skip"))
    skipping.codebook_, skipping.projection_ = local_model.codebook_, local_model.projection_
    skipping.backbone_sha256_ = local_model.backbone_sha256_
    enc = distributed.encode(client, paths, skipping, partition_size=3)
    assert [i for i, _ in enc.failed] == [5] and "broken.png" in str(enc.failed[0][1])
    np.testing.assert_array_equal(enc.indices, [i for i in range(len(paths)) if i != 5])
    np.testing.assert_allclose(enc.codes, local_codes, rtol=0, atol=1e-6)


def test_codebook_sample_skips_unreadable_images_like_the_local_path(client: Client, broken: str,
                                                                     data: tuple[list[str], np.ndarray]) -> None:
    # Every image is in the sample, the broken one too: the workers must find it unreadable
    # before the points are drawn, or every later image's points would shift.
    paths = [*data[0][:3], broken, *data[0][3:10]]
    params = small_model_params(on_error="skip", codebook_images=len(paths))
    local = FastVLAD(**params).fit_codebook(paths)
    remote = distributed.fit_codebook(client, paths, FastVLAD(**params), partition_size=4)
    np.testing.assert_array_equal(remote.codebook_, local.codebook_)


def test_completeness_check_refuses_lost_or_repeated_images() -> None:
    part = distributed._Part(np.array([0, 1]), np.zeros((2, 3), np.float32), [])
    with pytest.raises(DistributedError, match=r"1 image\(s\) never \(first: \[2\]\)"):
        distributed._assemble(3, [part])
    with pytest.raises(DistributedError, match=r"1 more than once \(first: \[1\]\)"):
        distributed._assemble(3, [part, distributed._Part(np.array([1, 2]), np.zeros((2, 3), np.float32), [])])


def test_connect_checks_its_options() -> None:
    with distributed.connect(None, 0) as none:
        assert none is None
    with pytest.raises(ParameterError, match="--scheduler and --workers"), distributed.connect("tcp://127.0.0.1:1", 2):
        pass
    with (pytest.raises(DistributedError, match="tcp://127.0.0.1:1: cannot connect"),
          distributed.connect("tcp://127.0.0.1:1", 0, timeout=1)):
        pass
    # an address Dask cannot parse was "unexpected ValueError"; a worker count without bound started them all
    with pytest.raises(ParameterError, match=r"--scheduler zzz://::::: not a scheduler address \(unknown address "
                       "scheme 'zzz'"), distributed.connect("zzz://::::"):
        pass
    with pytest.raises(ParameterError, match=r"--workers 100000: at most \d+ here"), distributed.connect(None, 100000):
        pass


@pytest.mark.parametrize("text", ["abc", "0", "-2", "1.5", "99999999999999", "٣"])
def test_worker_threads_variable_is_checked(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``FASTVLAD_THREADS=abc`` on a user-started worker was ``int()``'s ValueError; "-2" read as 1."""
    monkeypatch.setenv(distributed.THREADS_ENV, text)
    with pytest.raises(ParameterError, match=f"FASTVLAD_THREADS={text!r}: give a whole number of threads"):
        distributed.worker_threads()
    monkeypatch.setenv(distributed.THREADS_ENV, " 3 ")
    assert distributed.worker_threads() == 3
    monkeypatch.delenv(distributed.THREADS_ENV)
    assert distributed.worker_threads() >= 1


def test_cli_encode_predict_on_the_cluster(client: Client, dask_model: FastVLAD, demo_folder: Path,
                                           tmp_path: Path) -> None:
    model_file = dask_model.save(tmp_path / "m.fvl")
    _cli_encode_predict(model_file, demo_folder, tmp_path, ["--scheduler", client.scheduler.address])


@pytest.mark.slow  # CLI train on the cluster: 100 rounds of XGBoost's histogram allreduce, ~10 s
def test_cli_workers_starts_a_local_cluster(vgg16_path: Path, demo_folder: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["-q", "train", str(demo_folder), "-o", str(tmp_path / "m.fvl"), *SMALL,
                                   "--workers", "2"])
    assert res.exit_code == 0, res.output
    _cli_encode_predict(tmp_path / "m.fvl", demo_folder, tmp_path, ["--workers", "2"])


def _cli_encode_predict(model_file: Path, demo_folder: Path, tmp_path: Path, where: list[str]) -> None:
    """encode and predict through the CLI on a cluster: the codes and probabilities must be
    the ones the saved model gives locally."""
    res = CliRunner().invoke(app, ["-q", "encode", str(demo_folder), "-o", str(tmp_path / "c.npy"),
                                   "--model", str(model_file), *where])
    assert res.exit_code == 0, res.output
    model = load(model_file)
    paths = [str(p) for p in datasets.load(demo_folder).paths]
    local = model.transform(paths)
    np.testing.assert_allclose(np.load(tmp_path / "c.npy"), local, rtol=0, atol=1e-6)
    res = CliRunner().invoke(app, ["-q", "predict", str(model_file), str(demo_folder),
                                   "-o", str(tmp_path / "p.csv"), *where])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    proba = np.array([[float(r[f"p_{c}"]) for c in model.classes_] for r in rows])
    np.testing.assert_allclose(proba, model.predict_proba(paths), rtol=0, atol=2e-6)  # CSV has 6 decimals


# Last in the file: it kills one of the module cluster's workers (its nanny starts a new one).
def test_a_worker_killed_mid_encoding_loses_and_repeats_nothing(client: Client, data: tuple[list[str], np.ndarray],
                                                                 local_model: FastVLAD,
                                                                 local_codes: np.ndarray) -> None:
    paths = data[0] * 3  # 48 images in 24 partitions: the kill lands while most are pending
    client.wait_for_workers(2, timeout=30)
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["encoded"] = distributed.encode(client, paths, local_model, partition_size=2)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    victim = _busy_worker(client, deadline=time.monotonic() + 30)
    pid = client.run(os.getpid, workers=[victim])[victim]
    assert thread.is_alive(), "encoding finished before the kill; nothing was tested"
    os.kill(pid, signal.SIGKILL)
    thread.join(timeout=60)
    assert not thread.is_alive(), "encoding did not finish within 60 s of the kill"
    assert victim not in client.scheduler_info()["workers"]
    client.wait_for_workers(2, timeout=30)  # the nanny's replacement, for a clean teardown
    assert "error" not in result, result.get("error")
    enc = result["encoded"]
    np.testing.assert_array_equal(enc.indices, np.arange(len(paths)))  # type: ignore[attr-defined]
    np.testing.assert_allclose(enc.codes, np.tile(local_codes, (3, 1)), rtol=0, atol=1e-6)  # type: ignore[attr-defined]


def _busy_worker(client: Client, deadline: float) -> str:
    """The address of a worker that has an encoding task, polled until ``deadline``."""
    while time.monotonic() < deadline:
        busy = [w for w, keys in client.processing().items() if any("_encode_part" in str(k) for k in keys)]
        if busy:
            return busy[0]
        time.sleep(0.01)
    raise AssertionError("no worker started an encoding task within 30 s")


@pytest.mark.parametrize("head", ["logistic", "ridge", "xgboost"])
def test_class_weights_reach_the_cluster_head(client: Client, data: tuple[list[str], np.ndarray], head: str) -> None:
    """``class_weight="balanced"`` on classes of unequal size: the cluster's head must weigh the
    images as the local one does (on equal classes every weight is 1 and cannot tell)."""
    paths, labels = data
    keep = np.ones(len(paths), bool)
    keep[np.flatnonzero(labels == np.unique(labels)[0])[: -2]] = False  # leave the first class two images
    X, y = [p for p, k in zip(paths, keep) if k], labels[keep]
    assert len(set(np.unique(y, return_counts=True)[1].tolist())) > 1
    params = small_model_params(classifier=head)
    local = FastVLAD(**params).fit(X, y)
    remote = distributed.fit(client, X, y, FastVLAD(**params), partition_size=3)
    np.testing.assert_allclose(remote.predict_proba(X), local.predict_proba(X), rtol=0, atol=1e-5)


def test_fit_cuts_tiles_as_the_local_fit_does(client: Client, data: tuple[list[str], np.ndarray]) -> None:
    """With ``tile`` the local fit trains on every tile with its micrograph's label; the cluster's fit
    must do the same (it once encoded the whole images, so predict, which tiles, met another model)."""
    params = small_model_params(tile=(32, 32))
    local = FastVLAD(**params).fit(*data)
    remote = distributed.fit(client, *data, FastVLAD(**params), partition_size=5)
    assert remote.train_info_["n_images"] == local.train_info_["n_images"] == 4 * len(data[0])
    np.testing.assert_array_equal(remote.codebook_, local.codebook_)
    np.testing.assert_allclose(remote.predict_proba(data[0]), local.predict_proba(data[0]), rtol=0, atol=1e-5)


def test_zoomed_copies_on_the_cluster_match_the_local_fit(client: Client, data: tuple[list[str], np.ndarray]) -> None:
    """``zoom`` (each training image also at other input sizes, to the head only, flipped and
    re-exposed: ``zoom_jitter``, the default) with a linear head: the cluster encodes the copies on
    the workers and the head learns what the local one learns."""
    params = small_model_params(classifier="ridge", zoom=(1.25, 0.75), zoom_jitter=True)
    local = FastVLAD(**params).fit(*data)
    remote = distributed.fit(client, *data, FastVLAD(**params), partition_size=5)
    np.testing.assert_allclose(remote.head_.coef, local.head_.coef, rtol=0, atol=1e-5)
    np.testing.assert_allclose(remote.predict_proba(data[0]), local.predict_proba(data[0]), rtol=0, atol=1e-5)
    without = FastVLAD(**small_model_params(classifier="ridge")).fit(*data)
    codes = local.transform(data[0])  # the same codebook: the copies reach the head only
    assert not np.allclose(without.head_.margin(codes), local.head_.margin(codes), rtol=0, atol=1e-3)  # they count
    assert remote.timings_["zoom_cnn"] > 0
    assert (remote.train_info_["n_images"], remote.train_info_["n_copies"]) == (len(data[0]), 2 * len(data[0]))
    assert (local.train_info_["n_images"], local.train_info_["n_copies"]) == (len(data[0]), 2 * len(data[0]))
    with pytest.raises(ParameterError, match=r"zoom=\(1.25, 0.75\) with classifier='xgboost'.*linear heads"):
        distributed.fit(client, *data, FastVLAD(**small_model_params(zoom=(1.25, 0.75))), partition_size=5)


def test_codebook_on_the_cluster_records_the_int8_graph(client: Client, data: tuple[list[str], np.ndarray]) -> None:
    """The cluster's codebook records the CNN as the local fit does, the int8 graph's identity with it:
    it had left ``quantized_`` unset, so an int8 model fitted on a cluster was saved without the
    record its graph is checked against at every use (or kept a stale one from an earlier fit)."""
    quantize.build()  # the default int8 graph, cached as tests/test_quantize.py builds it
    params = small_model_params(precision="int8")
    local = FastVLAD(**params).fit_codebook(data[0])
    remote = distributed.fit_codebook(client, data[0], FastVLAD(**params), partition_size=5)
    assert local.quantized_ is not None and remote.quantized_ == local.quantized_
    np.testing.assert_array_equal(remote.codebook_, local.codebook_)
    assert distributed.fit_codebook(client, data[0], remote.set_params(precision="fp32")).quantized_ is None


def test_a_failed_fit_on_the_cluster_leaves_the_model_as_it_was(client: Client, data: tuple[list[str], np.ndarray],
                                                                dask_model: FastVLAD,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """As the local fit (``estimator.all_or_nothing``): a cluster fit that fails after its new codebook
    must not leave that codebook beside the old head (other answers, no error)."""
    model = copy.copy(dask_model).set_params(k=4)

    def fail(*args: object, **kwargs: object) -> float:
        raise RuntimeError("the head failed")

    monkeypatch.setattr(distributed, "_train", fail)
    with pytest.raises(RuntimeError, match="the head failed"):
        distributed.fit(client, *data, model, partition_size=5)
    assert model.codebook_ is dask_model.codebook_ and model.head_ is dask_model.head_
    assert model.timings_ is dask_model.timings_ and model.k == 4


def test_shared_values_survive_the_workers_that_held_them(client: Client) -> None:
    """The centres and the head reach the tasks as ``distributed._shared``: recomputed when every
    worker holding them dies. Scattered (the earlier way) they were lost with their worker, and a
    whole encoding failed with FutureCancelledError (CI at c6d6783)."""
    client.wait_for_workers(2, timeout=30)
    shared = distributed._shared(client, np.arange(5))
    assert shared.result(timeout=30).sum() == 10
    holders = client.who_has([shared])[shared.key]
    assert holders
    pids = client.run(os.getpid, workers=list(holders))
    for pid in pids.values():
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while set(holders) & set(client.scheduler_info()["workers"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    client.wait_for_workers(2, timeout=60)  # the nannies' replacements
    assert client.submit(np.sum, shared, pure=False).result(timeout=60) == 10
