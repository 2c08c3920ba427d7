"""Throughput of the Dask path (1 and 2 local worker processes) against the local path.

Usage: ``flock /tmp/fastvlad-heavy.lock python benchmarks/dask_scaling.py [--images 48] [--data DIR]``.

Side by side in one run, on the same files and the same codebook:

- encoding (the CNN pass): ``FastVLAD.encode`` in this process, then
  ``fastvlad.distributed.encode`` on a LocalCluster of one worker process (all cores) and of
  two (the cores split). Each is warmed up first (backbone opened, Numba kernels loaded) and
  timed ``--repeats`` times; the fastest run counts. The codes must equal the local ones.
- training: seconds per boosting round of XGBoost on those codes, ``xgb.train`` locally vs
  ``xgboost.dask.train`` on the same clusters (``--rounds`` rounds, after one warm-up round).

Images are demo micrographs written as PNG files at the network size (faithful settings:
224², d = 10 %, k = 100), or the first ``--images`` files of ``--data`` (folder or CSV).
Prints a table and one JSON line.

Named so, not ``distributed.py``: a script's folder comes first on ``sys.path``, and that
name would hide the ``distributed`` package from the script and the workers it spawns.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from fastvlad import classifier, datasets, demo, distributed
from fastvlad.estimator import FastVLAD


def best_seconds(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    """Seconds of the fastest of ``repeats`` runs of ``fn()``."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def load_images(args: argparse.Namespace, folder: Path) -> tuple[list[str], np.ndarray]:
    if args.data:
        ds = datasets.load(Path(args.data))
    else:
        ds = datasets.load(demo.write_dataset(folder, -(-args.images // 4), size=args.size, random_state=0))
    return [str(p) for p in ds.paths[: args.images]], np.unique(np.asarray(ds.labels)[: args.images],
                                                                 return_inverse=True)[1]


def round_seconds(train, rounds: int) -> float:  # type: ignore[no-untyped-def]
    """Seconds per boosting round: ``train(r)`` for 1 and for 1 + ``rounds`` rounds, differenced
    (after an untimed warm-up, so fixed costs cancel)."""
    train(1)
    t = time.perf_counter()
    train(1)
    one = time.perf_counter() - t
    t = time.perf_counter()
    train(1 + rounds)
    return (time.perf_counter() - t - one) / rounds


def local_train(codes: np.ndarray, y: np.ndarray, model: FastVLAD):  # type: ignore[no-untyped-def]
    def train(rounds: int) -> None:
        settings = classifier.BoosterSettings(n_estimators=rounds)
        classifier.train(codes, y, int(y.max()) + 1, settings, "cpu", 0)
    return train


def dask_train(client, codes: np.ndarray, y: np.ndarray, workers: int):  # type: ignore[no-untyped-def]
    import dask.array as da
    import xgboost.dask as dxgb

    rows = -(-len(codes) // workers)
    X = client.persist(da.from_array(codes, chunks=(rows, codes.shape[1])))
    labels = client.persist(da.from_array(y, chunks=(rows,)))

    def train(rounds: int) -> None:
        settings = classifier.BoosterSettings(n_estimators=rounds)
        dtrain = dxgb.DaskQuantileDMatrix(client, X, labels, max_bin=settings.max_bin)
        dxgb.train(client, settings.params(int(y.max()) + 1, "cpu", 0), dtrain, num_boost_round=rounds)
    return train


def on_cluster(model: FastVLAD, paths: list[str], y: np.ndarray, workers: int, args: argparse.Namespace,
               reference: np.ndarray) -> dict[str, float]:
    """Encoding images/s, seconds per boosting round and cluster start-up seconds."""
    from distributed import Client

    t = time.perf_counter()
    with distributed.local_cluster(workers, device="cpu") as cluster, Client(cluster) as client:
        client.wait_for_workers(workers)
        distributed.warm_up(client, model)
        startup = time.perf_counter() - t
        distributed.encode(client, paths[: 2 * workers], model, partition_size=1)  # Numba kernels load
        enc = distributed.encode(client, paths, model, partition_size=args.partition)
        assert np.allclose(enc.codes, reference, rtol=0, atol=1e-5), "distributed codes differ from the local ones"
        seconds = best_seconds(lambda: distributed.encode(client, paths, model, partition_size=args.partition),
                               args.repeats)
        per_round = round_seconds(dask_train(client, reference, y, workers), args.rounds)
    return {"img_s": len(paths) / seconds, "round_s": per_round, "start_s": startup}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--size", type=int, default=224, help="side of the demo images")
    ap.add_argument("--data", help="folder or CSV (with labels) of real images instead of demo ones")
    ap.add_argument("--density", type=float, default=10.0)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--partition", type=int, default=None, help="images per partition (default: automatic)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="timed boosting rounds")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="fastvlad-bench-dask-") as tmp:
        paths, y = load_images(args, Path(tmp))
        model = FastVLAD(density=args.density, k=args.k, codebook_images=16, device="cpu")
        model.fit_codebook(paths)
        model.encode(paths[:8])  # warm-up: backbone, Numba kernels
        reference = model.encode(paths).codes
        local = {"img_s": len(paths) / best_seconds(lambda: model.encode(paths), args.repeats),
                 "round_s": round_seconds(local_train(reference, y, model), args.rounds), "start_s": 0.0}
        one = on_cluster(model, paths, y, 1, args, reference)
        two = on_cluster(model, paths, y, 2, args, reference)

    print(f"{len(paths)} images, {args.size}², d = {args.density} %, k = {args.k} "
          f"(codes {reference.shape[1]:,} wide), {os.cpu_count()} cores ({platform.machine()})")
    print(f"{'path':<22}{'encode img/s':>14}{'vs local':>10}{'s/round':>10}{'vs local':>10}{'start s':>10}")
    for name, r in (("local (this process)", local), ("dask, 1 worker", one), ("dask, 2 workers", two)):
        print(f"{name:<22}{r['img_s']:>14.2f}{r['img_s'] / local['img_s']:>10.2f}{r['round_s']:>10.3f}"
              f"{r['round_s'] / local['round_s']:>10.1f}{r['start_s']:>10.1f}")
    print(json.dumps({"images": len(paths), "size": args.size, "density": args.density, "k": args.k,
                      "local": local, "dask_1_worker": one, "dask_2_workers": two,
                      "encode_overhead_1_worker": local["img_s"] / one["img_s"] - 1}))


if __name__ == "__main__":
    main()
