"""Physical scale, data bar, tiles and micrograph-level answers (issue 18, items 2 and 3)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fastvlad import config, model_file, tiling
from fastvlad.cli import app
from fastvlad.errors import ImageReadError, ParameterError
from fastvlad.estimator import load
from fastvlad.micrograph_cv import cross_validate_tiles

from . import microscopy_files as mf
from .tiny_model import fitted_copy


def scene(nm_per_px: float, size_px: int, seed: int = 0, sigma: float = 4.0, n: int = 260,
          extent: float = 300.0) -> np.ndarray:
    """A specimen of Gaussian blobs (``sigma`` nm) in a 300 nm field on a grey, slightly noisy
    background, imaged at ``nm_per_px``: (size, size) uint8."""
    rng = np.random.default_rng(seed)
    centres, amps = rng.uniform(0, extent, size=(n, 2)), rng.uniform(0.5, 1.0, n)
    coords = (np.arange(size_px) + 0.5) * nm_per_px
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    img = np.full((size_px, size_px), 0.25)
    for (cy, cx), a in zip(centres, amps):
        img += a * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    img += np.random.default_rng(seed + 1000).normal(0, 0.01, img.shape)
    return (np.clip(img / 1.6, 0.05, 0.95) * 255).astype(np.uint8)


def with_data_bar(image: np.ndarray, rows: int) -> np.ndarray:
    """``image`` with an SEM-style data bar below: black, white text blocks and a white scale bar."""
    bar = np.zeros((rows, image.shape[1]), image.dtype)
    bar[rows // 4: rows // 4 + 5, 10:60] = 255  # "text"
    bar[rows // 2: rows // 2 + 2, image.shape[1] - 80: image.shape[1] - 20] = 255  # scale bar
    bar[rows // 4: rows // 4 + 5, 70:75] = 128  # an anti-aliased glyph
    return np.concatenate([image, bar])


# -- tiles -----------------------------------------------------------------------------------------
def test_tile_count_stride_and_cover() -> None:
    b = tiling.boxes(100, 250, (40, 100))
    assert [(t, left) for t, left, _, _ in b] == [(t, left) for t in (0, 40, 60) for left in (0, 100, 150)]
    assert all((h, w) == (40, 100) for _, _, h, w in b)
    b = tiling.boxes(100, 250, (40, 100), (20, 50))  # overlapping: starts every 20 rows, 50 columns
    assert len(b) == 4 * 4 and sorted({t for t, *_ in b}) == [0, 20, 40, 60]
    assert sorted({left for _, left, *_ in b}) == [0, 50, 100, 150]
    covered = np.zeros((100, 250), bool)
    for t, left, h, w in tiling.boxes(100, 250, (30, 70), (45, 90)):  # stride > tile leaves gaps…
        covered[t:t + h, left:left + w] = True
    assert covered[-1, -1] and covered[0, 0]  # … but the far edges are always covered
    assert tiling.boxes(20, 30, (64, 64)) == [(0, 0, 20, 30)]  # smaller than a tile: one tile, itself
    assert len(tiling.boxes(128, 128, (64, 64))) == 4


def test_a_micrograph_changed_between_predictions_is_read_again(tmp_path: Path) -> None:
    """A microscope that rewrites one file between predictions (or a bare array refilled in place)
    got the first micrograph's answers again: prepared micrographs were cached by path (or by the
    array's id) alone."""
    from PIL import Image

    from fastvlad import demo

    model = fitted_copy(tile=(64, 64))
    images, _ = demo.make_dataset(2, size=64, random_state=3)
    first, second = (np.tile(np.clip(np.asarray(images[i]), 0, 255).astype(np.uint8), (2, 2)) for i in (0, 5))
    live, fresh = tmp_path / "live.png", tmp_path / "fresh.png"
    Image.fromarray(second).save(fresh)
    Image.fromarray(first).save(live)
    before = model.predict_proba([str(live)])
    Image.fromarray(second).save(live)
    after, want = model.predict_proba([str(live)]), model.predict_proba([str(fresh)])
    assert not np.allclose(before, want, rtol=0, atol=1e-4)  # the two micrographs differ
    np.testing.assert_array_equal(after, want)
    buffer = first.copy()
    model.predict_proba([buffer])
    buffer[:] = second
    np.testing.assert_array_equal(model.predict_proba([buffer]), model.predict_proba([second.copy()]))


def test_tiles_are_cut_from_the_prepared_micrograph() -> None:
    image = np.arange(100 * 130, dtype=np.uint16).reshape(100, 130)
    settings = tiling.Settings(tile=(40, 50), stride=(40, 50))
    plan = tiling.plan([image], settings)
    assert len(plan.sources) == 3 * 3 and (plan.owner == 0).all()
    whole = tiling.prepare(tiling.Micrograph(image), settings).values
    t = plan.sources[4]  # the middle tile
    assert t.box == (40, 50, 40, 50)
    np.testing.assert_array_equal(t.pixels_255(), whole[40:80, 50:100])  # one intensity scale for the whole


# -- data bar ------------------------------------------------------------------------------------
def test_crop_bottom_and_data_bar_detection(tmp_path: Path) -> None:
    micrograph = scene(1.0, 160)
    barred = with_data_bar(micrograph, 24)
    assert tiling.data_bar_rows(barred.astype(np.float32)) == 24
    assert tiling.data_bar_rows(micrograph.astype(np.float32)) == 0  # no bar, nothing cut
    dark = micrograph.copy()
    dark[60:] = 0  # a dark lower half is a specimen, not a data bar (too tall)
    assert tiling.data_bar_rows(dark.astype(np.float32)) == 0
    prepared = tiling.prepare(tiling.Micrograph(barred), tiling.Settings(crop_bottom="auto"))
    assert prepared.values.shape == micrograph.shape and prepared.crop == 24
    assert tiling.prepare(tiling.Micrograph(barred), tiling.Settings(crop_bottom=30)).values.shape == (154, 160)
    sem = mf.write_fei_tiff(tmp_path / "sem.tif", barred, 2.0, bar=24)  # as an FEI SEM writes it
    prepared = tiling.prepare(tiling.Micrograph(sem), tiling.Settings(crop_bottom="auto", scale_nm_per_px=4.0))
    assert prepared.values.shape == (80, 80) and prepared.factor == 0.5
    with pytest.raises(ImageReadError, match="crop_bottom=175 leaves fewer than 16"):
        tiling.prepare(tiling.Micrograph(barred), tiling.Settings(crop_bottom=175))


# -- scale -----------------------------------------------------------------------------------------
def test_resampling_to_a_physical_scale() -> None:
    image = scene(0.5, 128)
    p = tiling.prepare(tiling.Micrograph(image, 0.5), tiling.Settings(scale_nm_per_px=1.0))
    assert p.values.shape == (64, 64) and p.factor == 0.5 and p.pixel_size_nm == 0.5
    with pytest.raises(ImageReadError, match=r"array: has no pixel size .* pixel_size_nm column .* --missing-scale"):
        tiling.prepare(tiling.Micrograph(image), tiling.Settings(scale_nm_per_px=1.0))
    kept = tiling.prepare(tiling.Micrograph(image), tiling.Settings(scale_nm_per_px=1.0, missing_scale="ignore"))
    assert kept.values.shape == (128, 128) and kept.factor == 1.0


def test_twice_the_magnification_gives_the_same_codes_once_rescaled() -> None:
    """The same 128 nm field imaged at 1 nm/px and at 0.5 nm/px (2× magnification): resampled to
    1 nm/px, each tile's code is within a few percent of the 1× tile's; without resampling the
    2× tiles see blobs twice as large and their codes are far off."""
    one, two = scene(1.0, 128), scene(0.5, 256)
    # The nearest centre: this toy codebook (k = 8, 1,000 points a tile) leaves centres that soft
    # assignment reaches only with small weights, whose unit-length blocks move with the resampling
    # (one tile's cosine 0.929 at softness 10); the rescaling, not the aggregation, is under test.
    scaled = fitted_copy(scale_nm_per_px=1.0, tile=(64, 64), density=2.0, softness=None)
    plain = fitted_copy(tile=(64, 64), density=2.0, softness=None)
    c1 = scaled.transform([tiling.Micrograph(one, 1.0)])
    c2 = scaled.transform([tiling.Micrograph(two, 0.5)])
    c2_plain = plain.transform([tiling.Micrograph(two, 0.5)])
    assert c1.shape == c2.shape == (4, 512) and c2_plain.shape == (16, 512)
    cosine = (c1 * c2).sum(axis=1) / np.linalg.norm(c1, axis=1) / np.linalg.norm(c2, axis=1)
    assert cosine.min() > 0.95, cosine
    near, far = np.linalg.norm(c1.mean(0) - c2.mean(0)), np.linalg.norm(c1.mean(0) - c2_plain.mean(0))
    assert near < 0.3 * far, (near, far)


# -- micrograph answers ---------------------------------------------------------------------------
def test_aggregate_is_the_mean_of_its_tiles() -> None:
    plan = tiling.Plan([None] * 5, np.array([0, 0, 0, 2, 2]), 3)  # type: ignore[list-item]
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [np.nan, np.nan], [0.4, 0.6]], np.float32)
    agg = plan.aggregate(proba)
    np.testing.assert_allclose(agg.proba[0], [0.6, 0.4])
    np.testing.assert_allclose(agg.share[0], [2 / 3, 1 / 3])
    assert np.isnan(agg.proba[1]).all() and agg.tiles.tolist() == [3, 0, 2] and agg.readable.tolist() == [3, 0, 1]
    np.testing.assert_allclose(agg.proba[2], [0.4, 0.6])  # the unreadable tile is left out, not counted as 0


def test_predict_proba_of_a_micrograph_is_the_mean_of_its_tiles() -> None:
    model = fitted_copy(tile=(64, 64), tile_stride=48)
    micrographs = [scene(1.0, 128, seed=1), scene(1.0, 160, seed=2)]
    proba = model.predict_proba(micrographs)
    plan = tiling.plan_for(model, micrographs)
    assert plan is not None and np.bincount(plan.owner).tolist() == [9, 9]  # starts 0, 48, 64 / 0, 48, 96
    tiles = model.predict_proba(plan.sources)
    for i in range(2):
        np.testing.assert_allclose(proba[i], tiles[plan.owner == i].mean(axis=0), rtol=1e-6)
    assert model.predict(micrographs).tolist() == list(model.classes_[proba.argmax(axis=1)])


def test_model_file_records_tiling_and_old_files_load_untiled(tmp_path: Path) -> None:
    model = fitted_copy(scale_nm_per_px=0.8, tile="48x64", tile_stride=(24, 32), crop_bottom="auto",
                        missing_scale="ignore")
    loaded = load(model.save(tmp_path / "t.fvl"))
    assert (loaded.scale_nm_per_px, loaded.tile, loaded.tile_stride, loaded.crop_bottom, loaded.missing_scale) == \
        (0.8, "48x64", (24, 32), "auto", "ignore")
    contents = model_file.load(tmp_path / "t.fvl")  # a model saved before these parameters existed
    for key in ("scale_nm_per_px", "tile", "tile_stride", "crop_bottom", "missing_scale"):
        del contents.config["params"][key]
    old = load(model_file.save(tmp_path / "old.fvl", contents))
    assert old.tile is None and old.scale_nm_per_px is None and tiling.plan_for(old, ["x.png"]) is None


@pytest.mark.parametrize(("params", "match"), [({"tile": "0x10"}, "tile='0x10'"), ({"tile": 8}, "at least 16"),
                                               ({"tile_stride": 10}, "without tile"),
                                               # gaps between tiles: README says no pixel is left out
                                               ({"tile": 64, "tile_stride": (32, 65)}, "longer than tile"),
                                               ({"scale_nm_per_px": -1}, "scale_nm_per_px=-1"),
                                               ({"crop_bottom": "some"}, "crop_bottom='some'"),
                                               ({"missing_scale": "skip"}, "missing_scale='skip'")])
def test_bad_micrograph_parameters(params: dict[str, object], match: str) -> None:
    with pytest.raises(ParameterError, match=match):
        fitted_copy(**params).predict_proba([np.zeros((64, 64), np.uint8)])


# -- the command line, from SEM TIFFs with metadata to answers per micrograph ---------------------
@pytest.fixture(scope="module")
def sem_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six FEI SEM TIFFs (two classes, 3 micrographs each) at two magnifications, with data bars;
    one plain TIFF without a pixel size (an empty pixel_size_nm cell); a manifest."""
    root = tmp_path_factory.mktemp("sem")
    rows = ["path,label,pixel_size_nm"]
    for k in range(6):
        (cls, sigma), nm = (("fine", 3.0) if k % 2 else ("coarse", 7.0)), (2.0 if k % 3 == 0 else 1.0)
        image = with_data_bar(scene(nm, int(192 / nm), seed=k, sigma=sigma), 20)
        mf.write_fei_tiff(root / f"m{k}.tif", image, nm, bar=20)
        rows.append(f"m{k}.tif,{cls},")
    import tifffile

    tifffile.imwrite(root / "plain.tif", scene(1.0, 96))
    rows.append("plain.tif,fine,")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


SMALL = ["--density", "0.2", "-k", "8", "--image-size", "64"]
TILING = ["--scale", "1.5", "--tile", "64x64", "--crop-bottom", "auto"]


@pytest.fixture(scope="module")
def tiled_model(vgg16_path: Path, sem_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("tm") / "sem.fvl"
    res = CliRunner().invoke(app, ["-q", "train", str(sem_data), "-o", str(out), *SMALL, *TILING,
                                   "--on-error", "skip"])
    assert res.exit_code == 0, res.output
    return out, res.output


def test_train_tiles_and_skips_what_has_no_scale(tiled_model: tuple[Path, str]) -> None:
    model = load(tiled_model[0])
    assert (model.tile, model.scale_nm_per_px, model.crop_bottom) == ("64x64", 1.5, "auto")
    # 192 nm wide at 1.5 nm/px = 128 px: 2 × 2 tiles per micrograph, 6 micrographs
    assert model.train_info_["n_images"] == 24 and "24 tiles of 6 micrographs" in tiled_model[1]
    (skipped,) = model.train_info_["skipped"]
    assert skipped[0].endswith("plain.tif") and "no pixel size" in skipped[1]


def test_predict_per_tile_and_per_micrograph(tiled_model: tuple[Path, str], sem_data: Path, tmp_path: Path) -> None:
    model = str(tiled_model[0])
    res = CliRunner().invoke(app, ["-q", "predict", model, str(sem_data), "-o", "-", "--on-error", "skip"])
    assert res.exit_code == 0, res.output
    tiles = list(csv.DictReader(io.StringIO(res.stdout)))
    assert len(tiles) == 24 + 1 and tiles[-1]["path"] == "plain.tif" and "no pixel size" in tiles[-1]["error"]
    m0 = [r for r in tiles if r["path"] == "m0.tif"]  # 2.0 nm/px, 96 px wide: tiles of 48 file pixels
    assert [(r["tile"], r["top"], r["left"], r["height"], r["width"]) for r in m0] == \
        [("0", "0", "0", "48", "48"), ("1", "0", "48", "48", "48"), ("2", "48", "0", "48", "48"),
         ("3", "48", "48", "48", "48")]
    res = CliRunner().invoke(app, ["-q", "predict", model, str(sem_data), "-o", str(tmp_path / "m.csv"),
                                   "--per-image", "--on-error", "skip"])
    assert res.exit_code == 0, res.output
    per = {r["path"]: r for r in csv.DictReader((tmp_path / "m.csv").open())}
    assert len(per) == 7 and per["plain.tif"]["predicted"] == "" and per["m0.tif"]["true"] == "coarse"
    classes = [c[2:] for c in per["m0.tif"] if c.startswith("p_")]
    for name, row in per.items():
        mine = [r for r in tiles if r["path"] == name and r["predicted"]]
        if not mine:
            continue
        assert int(row["tiles"]) == len(mine)
        for c in classes:
            assert float(row[f"p_{c}"]) == pytest.approx(np.mean([float(r[f"p_{c}"]) for r in mine]), abs=2e-6)
            assert float(row[f"share_{c}"]) == pytest.approx(np.mean([r["predicted"] == c for r in mine]), abs=1e-4)
        assert row["predicted"] == max(classes, key=lambda c: float(row[f"p_{c}"]))


def test_evaluate_keeps_a_micrographs_tiles_in_one_fold(vgg16_path: Path, sem_data: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["-q", "evaluate", str(sem_data), "--folds", "2", *SMALL, *TILING,
                                   "--on-error", "skip", "--json", str(tmp_path / "cv.json")])
    assert res.exit_code == 0, res.output
    assert "2-fold grouped CV accuracy" in res.output and "micrograph accuracy" in res.output
    assert "on 6 micrographs (24 tiles)" in res.output and " on 24 tiles, " in res.output  # not "24 images"
    assert json.loads((tmp_path / "cv.json").read_text())["n_images"] == 24


def test_tiled_cross_validation_groups_by_micrograph(vgg16_path: Path, sem_data: Path) -> None:
    sources = [str(sem_data / f"m{k}.tif") for k in range(6)]
    y = np.array(["coarse", "fine"] * 3)
    from fastvlad import FastVLAD

    from .conftest import small_model_params

    est = FastVLAD(**small_model_params(scale_nm_per_px=1.5, tile=64, crop_bottom="auto"))
    cv = cross_validate_tiles(est, sources, y, None, 3)
    folds = {}
    for row, i in enumerate(cv.result.indices):
        folds.setdefault(int(cv.plan.owner[i]), set()).add(int(cv.result.fold[row]))
    assert len(folds) == 6 and all(len(f) == 1 for f in folds.values())
    agg, acc = cv.micrographs()
    assert agg.tiles.tolist() == [4] * 6 and 0 <= acc <= 1


def test_data_bar_from_fei_metadata(tmp_path: Path) -> None:
    """A grey data bar the pixel heuristic cannot see is still cut: FEI's [Image] ResolutionY says where."""
    image = np.concatenate([scene(1.0, 128), np.full((30, 128), 120, np.uint8)])
    assert tiling.data_bar_rows(image.astype(np.float32)) == 0
    path = mf.write_fei_tiff(tmp_path / "grey.tif", image, 1.0, bar=30)
    assert tiling.prepare(tiling.Micrograph(path), tiling.Settings(crop_bottom="auto")).values.shape == (128, 128)


def test_explain_says_it_does_not_follow_tiles_yet(tiled_model: tuple[Path, str], sem_data: Path) -> None:
    res = CliRunner().invoke(app, ["-q", "explain", str(tiled_model[0]), str(sem_data / "m1.tif")])
    assert isinstance(res.exception, ParameterError) and "napari_plugin.classify" in str(res.exception)


# -- size limits -----------------------------------------------------------------------------------
def test_resampling_beyond_the_image_limit_names_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """--scale / pixel_size_nm: the resampled size is checked before resizing (it was an OverflowError
    for --scale 1e-9, an out-of-memory for a 2000 nm pixel at --scale 2)."""
    image = np.zeros((20, 30), np.uint8)
    with pytest.raises(ImageReadError, match=r"big\.tif: resampling its 1000 nm pixels to 1e-09 nm per pixel "
                       r"\(×1e\+12\) would make it 2e\+13×3e\+13 pixels \(height × width\), over the limit"):
        tiling.prepare(tiling.Micrograph(image, 1000.0, "big.tif"), tiling.Settings(scale_nm_per_px=1e-9))
    monkeypatch.setattr(config, "MAX_IMAGE_PIXELS", 10_000)
    with pytest.raises(ImageReadError, match=r"m\.png: resampling its 10 nm pixels to 1 nm per pixel \(×10\) "
                       r"would make it 200×300 pixels \(height × width\), over the limit of 10,000"):
        tiling.prepare(tiling.Micrograph(image, 10.0, "m.png"), tiling.Settings(scale_nm_per_px=1.0))
    assert tiling.prepare(tiling.Micrograph(image, 6.0), tiling.Settings(scale_nm_per_px=2.0)).values.shape == (60, 90)


def test_tiles_per_micrograph_are_capped() -> None:
    """tile=(16, 16), tile_stride=(1, 1) cut ~126,000 tiles from a 306×448 micrograph and the encoder
    then ran out of memory; the plan refuses it, naming the image, the count and the fix."""
    image = np.zeros((306, 448), np.uint8)
    settings = tiling.Settings(tile=(16, 16), stride=(1, 1))
    with pytest.raises(ImageReadError, match=r"dense\.png: tiles of 16×16 every 1×1 pixels would be 126,003 tiles "
                       r"of its 306×448 pixels \(height × width\), over the limit of [\d,]+ per micrograph\. use "
                       r"a larger tile or tile_stride"):
        tiling.plan([tiling.Micrograph(image, label="dense.png")], settings)
    plan = tiling.plan([tiling.Micrograph(image, label="dense.png"), np.zeros((64, 64), np.uint8)], settings,
                       skip_errors=True)  # skipped like an unreadable micrograph
    assert [i for i, _ in plan.failed] == [0] and len(plan.sources) == 49 ** 2
    assert tiling.tile_count(16384, 16384, (224, 224), (112, 112)) <= tiling.MAX_TILES  # a full-size montage
    for h, w, tile, stride in [(100, 250, (40, 100), None), (100, 250, (30, 70), (45, 90)), (20, 30, (64, 64), None),
                               (306, 448, (16, 16), (3, 7)), (128, 128, (64, 64), (64, 64))]:
        assert tiling.tile_count(h, w, tile, stride) == len(tiling.boxes(h, w, tile, stride))
