"""Explanations: per-codeword TreeSHAP contributions, the overlay PNGs, the codeword ranking."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fastvlad import explain, plots, reference
from fastvlad.backbone import Backbone
from fastvlad.cli import app
from fastvlad.encoder import Encoder, EncoderSettings, batch_points
from fastvlad.errors import ParameterError
from fastvlad.estimator import FastVLAD

from .conftest import small_model_params


@pytest.fixture(scope="module")
def model(vgg16_path: Path, small_demo: tuple[list[np.ndarray], np.ndarray]) -> FastVLAD:
    X, y = small_demo
    return FastVLAD(**small_model_params(n_estimators=20)).fit(X, y)


@pytest.fixture(scope="module")
def model_path(model: FastVLAD, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return model.save(tmp_path_factory.mktemp("m") / "m.fvl")


def _used_codewords(booster, dim: int) -> set[int]:  # type: ignore[no-untyped-def]
    """Codewords whose block holds a feature some tree splits on (read from the tree dump)."""
    return {int(f) // dim for f in re.findall(r"\[f(\d+)<", "".join(booster.get_dump()))}


def test_contributions_sum_to_the_raw_margin(model: FastVLAD, small_demo: tuple[list[np.ndarray], np.ndarray]) -> None:
    X, _ = small_demo
    for i in (0, 7, 13, 22):
        e = explain.explain(model, X[i])
        np.testing.assert_allclose(e.contributions.sum(axis=1) + e.bias, e.margin, rtol=1e-5, atol=1e-5)
        # the margin is XGBoost's own, and the probabilities are its softmax
        codes = model.transform([X[i]])
        np.testing.assert_allclose(e.margin, model.booster_.predict(__import__("xgboost").DMatrix(codes),
                                                                    output_margin=True)[0], rtol=1e-6)
        np.testing.assert_allclose(np.exp(e.margin) / np.exp(e.margin).sum(), e.proba, rtol=1e-5)
        assert e.target == int(e.proba.argmax())
        # only codewords whose features the trees split on can contribute
        nonzero = set(np.flatnonzero(np.abs(e.contributions).sum(axis=0)).tolist())
        assert nonzero and nonzero <= _used_codewords(model.booster_, model.codebook_.shape[1])


def test_explained_codes_are_the_models_codes(model: FastVLAD, small_demo: tuple[list[np.ndarray], np.ndarray]) -> None:
    """explain re-runs the encoder to keep the assignments: its codes, and the labels behind them,
    are transform()'s, bit for bit."""
    X, _ = small_demo
    (enc,) = list(Encoder.of(model).encode_batches(X[:3], keep=True))
    np.testing.assert_array_equal(enc.codes, model.transform(X[:3]))
    counts = np.stack([np.bincount(lab, minlength=model.k) for lab in enc.labels])
    blocks = enc.codes.reshape(3, model.k, -1)
    if model.softness is None:  # hard assignment: a codeword with no points has an all-zero VLAD block
        assert np.all(np.abs(blocks[counts == 0]).sum(axis=1) == 0)
    else:  # soft assignment: a codeword nearest to some point has a block (one nearest to none may too)
        assert np.all(np.abs(blocks[counts > 0]).sum(axis=1) > 0)


def test_binary_booster_contributions() -> None:
    import xgboost as xgb

    rng = np.random.default_rng(0)
    codes = rng.normal(size=(60, 4 * 5)).astype(np.float32)
    y = (codes[:, 3] + codes[:, 17] > 0).astype(int)
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 3}, xgb.DMatrix(codes, label=y), 15)
    contrib, bias = explain.codeword_contributions(booster, codes[:5], k=4)
    assert contrib.shape == (5, 2, 4)
    np.testing.assert_allclose(contrib.sum(axis=2) + bias, explain.raw_margin(booster, codes[:5]), rtol=1e-5, atol=1e-5)
    with pytest.raises(ParameterError, match="multiple of k"):
        explain.codeword_contributions(booster, codes[:5], k=3)


def test_overlay_pngs_have_the_image_size(model_path: Path, small_demo: tuple[list[np.ndarray], np.ndarray],
                                           tmp_path: Path) -> None:
    X, _ = small_demo
    img = tmp_path / "tile.png"
    Image.fromarray(np.asarray(Image.fromarray(X[5]).resize((90, 57)))).save(img)  # not the 64² grid
    out = tmp_path / "overlay.png"
    res = CliRunner().invoke(app, ["-q", "explain", str(model_path), str(img), "-o", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "margin" in res.output and "codeword" in res.output
    for p in (out, tmp_path / "overlay.support.png"):
        with Image.open(p) as im:
            assert im.size == (90, 57) and im.mode == "RGB"


def test_codeword_panel_colours_the_sampled_pixels() -> None:
    image = np.full((20, 30, 3), 100, np.uint8)
    points = np.array([[0, 0], [9, 14], [19, 29]], np.int32)
    panel = plots.codeword_panel(image, (20, 30), points, np.array([0, 1, 2]), k=3)
    colours = plots.codeword_colours(3)
    for (r, c), j in zip(points, range(3)):
        np.testing.assert_array_equal(panel[r, c], colours[j])
    assert (panel[5, 5] == 60).all()  # unsampled: dimmed gray
    up = plots.codeword_panel(np.full((40, 60, 3), 100, np.uint8), (20, 30), points, np.array([0, 1, 2]), k=3)
    np.testing.assert_array_equal(up[18:20, 28:30].reshape(-1, 3), np.repeat(colours[1:2], 4, axis=0))


def test_support_panel_is_a_voronoi_map() -> None:
    image = np.zeros((10, 10, 3), np.uint8)
    points = np.array([[0, 0], [9, 9]], np.int32)
    panel = plots.support_panel(image, (10, 10), points, np.array([1.0, -1.0]), alpha=1.0)
    assert panel[1, 1, 0] > panel[1, 1, 2]  # near the positive point: red
    assert panel[8, 8, 2] > panel[8, 8, 0]  # near the negative point: blue


def test_rank_codewords(model: FastVLAD, small_demo: tuple[list[np.ndarray], np.ndarray], tmp_path: Path) -> None:
    X, _ = small_demo
    ranking = explain.rank_codewords(model, X[:12], n_patches=3, patch=16)
    contrib, _ = explain.codeword_contributions(model.booster_, model.transform(X[:12]), model.k)
    np.testing.assert_allclose(ranking.mean_abs, np.abs(contrib).mean(axis=0), rtol=1e-5, atol=1e-7)
    assert ranking.patches.shape == (model.k, 3, 16, 16, 3) and ranking.n_images == 12
    np.testing.assert_array_equal(ranking.patch_dist, np.sort(ranking.patch_dist, axis=1))  # nearest first
    # Oracle, without the encoder: the notebook's full maps at the same points, projected, exact
    # float64 distances to every centre; the closest point of each codeword over all images.
    settings = EncoderSettings.of(model)
    pixels = np.stack([settings.preprocess(x) for x in X[:12]])
    taps = Backbone(model.backbone)(pixels)
    points = batch_points(pixels, settings)
    nearest = np.full(model.k, np.inf)
    for i in range(12):
        hc = model.projection_.apply(reference.sample_hypercolumns([t[i] for t in taps], points[i]))
        d = ((hc[:, None, :].astype(np.float64) - model.codebook_[None].astype(np.float64)) ** 2).sum(axis=2)
        np.minimum.at(nearest, d.argmin(axis=1), d.min(axis=1))
    np.testing.assert_array_equal(np.isinf(ranking.patch_dist[:, 0]), np.isinf(nearest))  # same codewords seen
    seen = np.isfinite(nearest)
    np.testing.assert_allclose(ranking.patch_dist[seen, 0], nearest[seen], rtol=1e-4, atol=1e-4 * nearest[seen].max())
    for c in ranking.classes:
        top = ranking.top(c, 4)
        score = ranking.mean_abs[ranking.classes.index(c)]
        assert np.all(np.diff(score[top]) <= 0) and np.all(score[top] > 0)
    written = explain.write_ranking(ranking, tmp_path, top=4)
    data = json.loads((tmp_path / "codewords.json").read_text())
    assert set(data["classes"]) == set(ranking.classes)
    assert all(p.is_file() for p in written) and any(p.suffix == ".png" for p in written)


def test_explain_cli_on_a_dataset(model_path: Path, demo_folder: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["-q", "explain", str(model_path), str(demo_folder), "-o", str(tmp_path / "cw"),
                                   "--max-images", "6", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "cw" / "codewords.json").read_text())["n_images"] == 6


def test_explain_cli_skips_unreadable_images_when_asked(model_path: Path, tmp_path: Path) -> None:
    """Its error hint named ``--on-error skip``, which explain did not have."""
    from fastvlad.errors import ImageReadError

    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(data / f"{i}.png")
    (data / "broken.png").write_bytes(b"not a png")
    args = ["-q", "explain", str(model_path), str(data), "--device", "cpu", "-o", str(tmp_path / "cw")]
    res = CliRunner().invoke(app, args)
    assert isinstance(res.exception, ImageReadError) and "--on-error skip" in str(res.exception)
    assert not (tmp_path / "cw").exists()
    res = CliRunner().invoke(app, [*args, "--on-error", "skip"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "cw" / "codewords.json").read_text())["n_images"] == 3
    assert "skipped 1 unreadable image(s)" in res.output and "broken.png" in res.output
    res = CliRunner().invoke(app, [*args, "--on-error", "ignore"])
    assert isinstance(res.exception, ParameterError) and "--on-error='ignore'" in str(res.exception)


def test_explain_refuses_a_folder_inside_the_dataset(model_path: Path, demo_folder: Path) -> None:
    """Its PNG grids, written into the dataset folder, would have been read as images next time."""
    from fastvlad.errors import WriteError

    for out in (demo_folder, demo_folder / "cw"):
        res = CliRunner().invoke(app, ["-q", "explain", str(model_path), str(demo_folder), "-o", str(out)])
        assert isinstance(res.exception, WriteError) and "inside the dataset folder" in str(res.exception)
    assert not (demo_folder / "cw").exists() and not (demo_folder / "codewords.json").exists()


def test_unknown_class_is_refused(model: FastVLAD, small_demo: tuple[list[np.ndarray], np.ndarray]) -> None:
    with pytest.raises(ParameterError, match="not one of the model's classes"):
        explain.explain(model, small_demo[0][0], target="graphene")


def test_explain_a_pca_model(vgg16_path: Path, small_demo: tuple[list[np.ndarray], np.ndarray]) -> None:
    """With a hypercolumn PCA the blocks are p wide (dim = code_width // k); explain follows the model."""
    X, y = small_demo
    model = FastVLAD(**small_model_params(pca=16, n_estimators=10)).fit(X, y)
    (enc,) = list(Encoder.of(model).encode_batches(X[:2], keep=True))
    assert enc.codes.shape == (2, model.k * 16)
    np.testing.assert_array_equal(enc.codes, model.transform(X[:2]))
    e = explain.explain(model, X[1])
    assert e.contributions.shape == (4, model.k)
    np.testing.assert_allclose(e.contributions.sum(axis=1) + e.bias, e.margin, rtol=1e-5, atol=1e-5)


def test_a_ranking_that_fails_part_way_leaves_nothing(model: FastVLAD, small_demo: tuple[list[np.ndarray], np.ndarray],
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """write_ranking writes all its files or none: a failure at the second class's grid left
    codewords.json and the first grid behind."""
    from fastvlad import plots

    X, _ = small_demo
    ranking = explain.rank_codewords(model, X[:8], n_patches=2, patch=16)
    real, calls = plots.patch_grid_png, []

    def second_fails(*args: object) -> Path:
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(plots, "patch_grid_png", second_fails)
    out = tmp_path / "ranking"
    with pytest.raises(OSError, match="disk full"):
        explain.write_ranking(ranking, out, top=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no folder, no hidden staging left
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OSError, match="disk full"):
        calls.clear()
        explain.write_ranking(ranking, out, top=2)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_a_long_class_name_still_makes_a_file_name(tmp_path: Path) -> None:
    """A 300-character label (a legitimate manifest value) gave "File name too long" after the work."""
    classes = ["L" * 300, "é" * 200, "short"]
    for path in explain.ranking_paths(tmp_path, classes):
        path.write_bytes(b"")  # the file system takes the name
        assert len(path.name.encode()) <= 255
    assert len({p.name for p in explain.ranking_paths(tmp_path, ["L" * 300, "L" * 301])}) == 3
