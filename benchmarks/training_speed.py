"""Training speed vs accuracy (issue #8): hypercolumn PCA, power normalisation, code PCA, XGBoost settings.

Three steps, each reusing the previous one's files in ``--work`` (default /tmp/fastvlad-p8):

``encode``  one CNN pass over a dataset (default: the shared nanofiber SEM set) computing the VLAD
            codes of every encoder variant at once (full 1472-d hypercolumns and PCA-p ones, each
            with and without power normalisation); codes → ``codes_<variant>.npy``.
``classify`` grouped 5-fold CV of classifier settings on the cached codes → ``results.jsonl``.
``timing``  the estimator's own ``fit`` on generated demo images (paper workload per image:
            d = 10 %, k = 100, 224²), per-stage seconds, and one-image prediction after load.

Run heavy steps under ``flock /tmp/fastvlad-heavy.lock`` on a shared machine, e.g.::

    flock /tmp/fastvlad-heavy.lock python benchmarks/training_speed.py encode
    flock /tmp/fastvlad-heavy.lock python benchmarks/training_speed.py classify --variants pca128 pca128_pow
    flock /tmp/fastvlad-heavy.lock python benchmarks/training_speed.py timing --images 200
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from fastvlad import codebook, datasets, evaluate, hypercolumn, projection, vlad
from fastvlad.backbone import Backbone
from fastvlad.backends.cpu import CPU
from fastvlad.encoder import Encoder, EncoderSettings, Timings, batch_points
from fastvlad.images import iter_batches

NANOFIBER = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "nanofiber-sem"
#: encoder variants: name → (PCA components or None, whiten)
ENCODERS = {"full": (None, False), "pca64": (64, False), "pca128": (128, False), "pca256": (256, False),
            "pca128w": (128, True)}
#: classifier settings: name → (code PCA components or None, XGBoost overrides)
#: name → (code PCA components or None, XGBoost parameters over the defaults)
CLASSIFIERS: dict[str, tuple[int | None, dict[str, Any]]] = {
    "xgb": (None, {}),
    "xgb_bin32": (None, {"max_bin": 32}),
    "xgb_bin64": (None, {"max_bin": 64}),
    "xgb_bin16": (None, {"max_bin": 16}),
    "xgb_col0.3": (None, {"colsample_bynode": 0.3}),
    "cpca256_xgb": (256, {}),
    "cpca64_xgb": (64, {}),
}


# -- encode: one CNN pass, every encoder variant -------------------------------------------------
def fit_encoders(sample: np.ndarray, k: int, seed: int, seconds: dict) -> dict:  # type: ignore[type-arg]
    """name → (Projection or None, centres) fitted on one codebook sample."""
    fitted = {}
    for name, (p, whiten) in ENCODERS.items():
        t = time.perf_counter()
        proj = projection.fit(sample, p, whiten, seed) if p else None
        seconds[name]["pca"] += time.perf_counter() - t
        t = time.perf_counter()
        centres, _ = codebook.fit_kmeans(proj.apply(sample) if proj else sample, k, random_state=seed)
        seconds[name]["kmeans"] += time.perf_counter() - t
        fitted[name] = (proj, centres)
    return fitted


def encode_batch(taps: list, points: np.ndarray, proj, centres: np.ndarray, seconds: dict) -> dict:  # type: ignore[no-untyped-def, type-arg]
    """VLAD codes of a batch without and with power normalisation (one assignment for both)."""
    t = time.perf_counter()
    hc = projection.gather(taps, points, proj) if proj else hypercolumn.gather(taps, points)
    t = _tick(seconds, "hypercolumns", t)
    labels, _ = codebook.assign(hc.reshape(-1, hc.shape[2]), centres)
    t = _tick(seconds, "assign", t)
    sums = vlad.residual_sums(hc, labels.reshape(hc.shape[:2]), centres)
    codes = {"": vlad.normalise(sums, power=False)}
    _tick(seconds, "vlad", t)
    codes["_pow"] = vlad.normalise(sums, power=True)
    return codes


def _tick(seconds: dict, stage: str, since: float) -> float:  # type: ignore[type-arg]
    now = time.perf_counter()
    seconds[stage] += now - since
    return now


def encode_all(data: Path, work: Path, density: float, k: int, codebook_images: int, seed: int) -> None:
    ds = datasets.load(data)
    sources = [str(p) for p in ds.paths]
    backend = CPU
    backbone = Backbone()
    settings = EncoderSettings(density=density, random_state=seed)
    seconds: dict = defaultdict(lambda: defaultdict(float))  # type: ignore[type-arg]
    timings = Timings()
    sample = Encoder(settings, backend, backbone).codebook_sample(sources, codebook_images, timings=timings)
    seconds["codebook_sample"] = dict(timings.seconds)
    fitted = fit_encoders(sample, k, seed, seconds)
    codes = {name + pw: np.zeros((len(sources), k * (p or sample.shape[1])), np.float32)
             for name, (p, _) in ENCODERS.items() for pw in ("", "_pow")}
    t_all = time.perf_counter()
    for batch in iter_batches(sources, settings.preprocess, backend.batch_size):
        t = time.perf_counter()
        taps = backbone(batch.pixels)
        _tick(seconds["cnn"], "cnn", t)
        points = batch_points(batch.pixels, settings)
        for name, (proj, centres) in fitted.items():
            for pw, c in encode_batch(taps, points, proj, centres, seconds[name]).items():
                codes[name + pw][batch.indices] = c
        print(f"\r{batch.indices[-1] + 1}/{len(sources)} images", end="", flush=True)
    seconds["wall"] = {"encode_pass": time.perf_counter() - t_all}
    work.mkdir(parents=True, exist_ok=True)
    for name, c in codes.items():
        np.save(work / f"codes_{name}.npy", c)
    if ds.labels is None or ds.groups is None:
        raise SystemExit(f"{data}: the encode step needs a manifest with label and group columns")
    np.save(work / "labels.npy", ds.labels.astype(str))
    np.save(work / "groups.npy", ds.groups.astype(str))
    meta = {"data": str(data), "n_images": len(sources), "density": density, "k": k, "seed": seed,
            "codebook_images": codebook_images, "sample_points": int(len(sample)),
            "explained_variance": {n: (f[0].explained_variance_ratio if f[0] else 1.0) for n, f in fitted.items()},
            "seconds": json.loads(json.dumps(seconds))}
    (work / "encode.json").write_text(json.dumps(meta, indent=2))
    print("\n" + json.dumps(meta["seconds"], indent=1))


# -- classify: grouped CV on cached codes ---------------------------------------------------------
def code_pca(train: np.ndarray, test: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray]:
    """PCA of the training codes (n ≪ dim: eigh of the n×n Gram matrix), applied to both."""
    mean = train.mean(axis=0)
    tr = train - mean
    values, vectors = np.linalg.eigh(tr @ tr.T)
    top = np.argsort(values)[::-1][:p]
    axes = (tr.T @ vectors[:, top]) / np.sqrt(np.maximum(values[top], 1e-12))  # (dim, p) unit columns
    return (tr @ axes).astype(np.float32), ((test - mean) @ axes).astype(np.float32)


def run_fold(codes: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, cpca: int | None,
             params: dict, n_classes: int) -> dict:  # type: ignore[type-arg]
    import xgboost as xgb

    t0 = time.perf_counter()
    xtr, xte = codes[train], codes[test]
    if cpca:
        xtr, xte = code_pca(xtr, xte, cpca)
    t1 = time.perf_counter()
    dtrain = xgb.QuantileDMatrix(xtr, label=y[train], max_bin=params["max_bin"])
    t2 = time.perf_counter()
    booster = xgb.train({**params, "num_class": n_classes}, dtrain, num_boost_round=params.pop("rounds", 100))
    t3 = time.perf_counter()
    pred = booster.predict(xgb.DMatrix(xte)).argmax(axis=1)
    return {"acc": float((pred == y[test]).mean()), "code_pca_s": t1 - t0, "dmatrix_s": t2 - t1, "train_s": t3 - t2,
            "total_s": time.perf_counter() - t0, "dim": int(xtr.shape[1])}


def classify(work: Path, variants: list[str], classifiers: list[str], n_folds: int, only_folds: int | None,
             seed: int) -> None:
    labels = np.load(work / "labels.npy")
    groups = np.load(work / "groups.npy")
    classes, y = np.unique(labels, return_inverse=True)
    fold = evaluate.folds(labels, groups, n_folds, seed)
    for variant in variants:
        codes = np.load(work / f"codes_{variant}.npy")
        for cname in classifiers:
            cpca, over = CLASSIFIERS[cname]
            params = {"objective": "multi:softprob", "tree_method": "hist", "max_depth": 3, "eta": 0.1,
                      "max_bin": 256, "colsample_bynode": 1.0, "seed": seed, **over}
            for f in range(only_folds or n_folds):
                r = run_fold(codes, y, fold != f, fold == f, cpca, dict(params), len(classes))
                row = {"variant": variant, "classifier": cname, "fold": f, **r}
                print(json.dumps(row), flush=True)
                with open(work / "results.jsonl", "a") as fh:
                    fh.write(json.dumps(row) + "\n")


def summarise(work: Path) -> None:
    rows = [json.loads(line) for line in open(work / "results.jsonl")]
    table: dict = defaultdict(list)  # type: ignore[type-arg]
    for r in rows:
        table[(r["variant"], r["classifier"])].append(r)
    print(f"{'variant':<14}{'classifier':<14}{'folds':>6}{'acc mean':>10}{'± std':>8}{'± SE':>8}{'s/fold':>9}{'dim':>8}")
    for (v, c), rs in table.items():
        acc = np.array([r["acc"] for r in rs])
        print(f"{v:<14}{c:<14}{len(rs):>6}{acc.mean():>10.3f}{acc.std():>8.3f}{acc.std() / np.sqrt(len(acc)):>8.3f}"
              f"{np.mean([r['total_s'] for r in rs]):>9.1f}{rs[0]['dim']:>8}")


# -- timing: the estimator's own fit on demo images -----------------------------------------------
def timing(work: Path, n_images: int, faithful: bool, seed: int, overrides: dict) -> dict:  # type: ignore[type-arg]
    """Train on ``n_images`` generated 224² demo images; per-stage seconds, the non-CNN fraction,
    and one-image prediction after loading the saved model (cold: first call; warm: median of 5)."""
    from fastvlad import demo
    from fastvlad.estimator import FastVLAD, load

    folder = work / f"demo{n_images}"
    if not (folder / "manifest.csv").is_file():
        demo.write_dataset(folder, n_images // 4, size=224, random_state=seed)
    ds = datasets.load(folder)
    assert ds.labels is not None
    paths = [str(p) for p in ds.paths]
    est = (FastVLAD.faithful if faithful else FastVLAD)(device="cpu", random_state=seed, **overrides)
    est.fit(paths, ds.labels)
    sec = {k: float(v) for k, v in est.timings_.items()}
    non_cnn = sec["total"] - sec["cnn"]
    model_path = est.save(work / "timing_model.fvl")
    t = time.perf_counter()
    loaded = load(model_path)
    loaded.predict(paths[:1])
    cold = time.perf_counter() - t
    warm = []
    for p in paths[1:6]:
        t = time.perf_counter()
        loaded.predict([p])
        warm.append(time.perf_counter() - t)
    encoder = Encoder.of(loaded)
    backbone = encoder.cnn
    pixels = encoder.settings.preprocess(paths[0])[None]
    cnn_one = []
    for _ in range(5):
        t = time.perf_counter()
        backbone(pixels)
        cnn_one.append(time.perf_counter() - t)
    result = {"setting": "faithful" if faithful else "default", "overrides": overrides, "n_images": len(paths),
              "n_codebook_images": int(est.codebook_images), "code_dim": int(est.codebook_.size),
              "seconds": sec, "per_image_ms": {k: 1000 * v / len(paths) for k, v in sec.items()},
              "non_cnn_s": non_cnn, "train_non_cnn_fraction": non_cnn / sec["cnn"],
              "stage_sum_fraction": sum(v for k, v in sec.items() if k not in ("cnn", "total")) / sec["cnn"],
              "predict_one_cold_s": cold, "predict_one_warm_s": float(np.median(warm)),
              "cnn_one_image_s": float(np.median(cnn_one))}
    name = f"timing_{result['setting']}_{n_images}{''.join(f'_{k}{v}' for k, v in overrides.items())}.json"
    (work / name).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=1))
    return result


def _overrides(pairs: list[str]) -> dict:  # type: ignore[type-arg]
    """``["max_bin=32", "pca=None"]`` → {"max_bin": 32, "pca": None}."""
    out = {}
    for pair in pairs:
        key, value = pair.split("=", 1)
        out[key] = json.loads(value) if value not in ("None", "none") else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["encode", "classify", "summary", "timing"])
    ap.add_argument("--work", type=Path, default=Path("/tmp/fastvlad-p8"))
    ap.add_argument("--data", type=Path, default=NANOFIBER)
    ap.add_argument("--density", type=float, default=10.0)
    ap.add_argument("-k", type=int, default=100)
    ap.add_argument("--codebook-images", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", nargs="+", default=["pca128"])
    ap.add_argument("--classifiers", nargs="+", default=["xgb"])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--only-folds", type=int, default=None, help="run only the first N folds")
    ap.add_argument("--images", type=int, default=200, help="timing: demo images to train on")
    ap.add_argument("--faithful", action="store_true", help="timing: the paper's settings")
    ap.add_argument("--set", nargs="*", default=[], help="timing: estimator parameters, e.g. max_bin=32 pca=64")
    args = ap.parse_args()
    if args.step == "encode":
        encode_all(args.data, args.work, args.density, args.k, args.codebook_images, args.seed)
    elif args.step == "classify":
        classify(args.work, args.variants, args.classifiers, args.folds, args.only_folds, args.seed)
    elif args.step == "summary":
        summarise(args.work)
    else:
        timing(args.work, args.images, args.faithful, args.seed, _overrides(args.set))


if __name__ == "__main__":
    main()
