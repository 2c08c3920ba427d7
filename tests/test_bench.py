"""``fastvlad bench``: a tiny end-to-end run through the CLI, and the arithmetic behind its ratios."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fastvlad import bench
from fastvlad.bench.baselines import (
    LOWER_BOUND_SWAPS,
    REFERENCE_STEPS,
    ReferenceCosts,
    run_peers,
)
from fastvlad.bench.machine import PeakRSS
from fastvlad.bench.scaling import image_counts, plot_scaling, streaming_growth
from fastvlad.cli import app
from fastvlad.errors import ParameterError, WriteError

TINY = ["--images", "4", "--demo-size", "64", "--image-size", "64", "--density", "0.1", "--k", "8",
        "--reference-images", "4", "--cnn-images", "4"]


@pytest.fixture(scope="module")
def tiny_result(vgg16_path: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    res = CliRunner().invoke(app, ["-q", "bench", *TINY, "--json", str(out)])
    assert res.exit_code == 0, res.output
    return json.loads(out.read_text()), res.output


def test_bench_json_keys_and_ranges(tiny_result: tuple[dict, str]) -> None:
    r, _ = tiny_result
    for key in ("cnn_images_per_s", "encode_images_per_s", "post_cnn_share", "device", "reference_speedup",
                "train_non_cnn_fraction", "stages", "machine", "reference", "extrapolated", "command"):
        assert key in r, key
    assert r["device"] == "cpu" and r["machine"]["versions"]["fastvlad"]
    assert 0.0 <= r["post_cnn_share"] <= 1.0 and "post_cnn_fraction" not in r  # (wall − CNN)/wall, named apart
    # from post_cnn_fraction_int8, which is (wall − CNN)/CNN (issue 15's key), as post_cnn_overhead is
    shares = [s["share"] for s in r["stages"].values()]
    assert all(0.0 <= s <= 1.0 for s in shares) and sum(shares) == pytest.approx(1.0)
    assert list(r["stages"])[:2] == ["decode", "cnn"] and "classifier" in r["stages"]
    assert r["reference_speedup"] > 0 and r["reference_speedup_lower_bound"] > 0
    assert r["train_non_cnn_fraction"] > 0 and r["cnn_images_per_s"] > 0 and r["encode_images_per_s"] > 0
    # The default's zoomed copies run the CNN too: their passes count as CNN time, not as "the rest".
    t = r["train"]["timings"]
    assert r["train"]["copies_cnn_seconds"] == t["zoom_cnn"] > 0
    cnn = t["cnn"] + t["zoom_cnn"]
    assert r["train_non_cnn_fraction"] == pytest.approx((t["total"] - cnn) / cnn)
    assert r["encoder"]["images"] == 4 and r["train"]["images"] == 4 and r["reference"]["images"] == 4
    assert r["settings"]["k"] == 8 and r["settings"]["density"] == 0.1
    assert r["command"].startswith("fastvlad bench --images 4")


def test_bench_extrapolation_matches_its_parts(tiny_result: tuple[dict, str]) -> None:
    """The extrapolated reference time is fixed + N × (sum of the per-image steps), recomputed here."""
    r, _ = tiny_result
    ref, x = r["reference"], r["extrapolated"]
    assert set(ref["per_image_seconds"]) == set(REFERENCE_STEPS)
    expected = sum(ref["fixed_seconds"].values()) + x["images"] * sum(ref["per_image_seconds"].values())
    assert x["reference_seconds"] == pytest.approx(expected)
    assert x["speedup"] == pytest.approx(x["reference_seconds"] / x["fastvlad_seconds"])
    assert r["reference_speedup"] == pytest.approx(
        r["reference_train_s_per_image"] / r["fastvlad_train_s_per_image"])


def test_bench_report_names_every_part(tiny_result: tuple[dict, str]) -> None:
    _, out = tiny_result
    for text in ("images/s", "(a) CNN alone", "(b) encoder", "(c) the paper's pipeline", "(d) k-means",
                 "sklearn_minibatch", "speed-up"):
        assert text in out, text


def test_reference_costs_arithmetic() -> None:
    per = {s: 1.0 for s in REFERENCE_STEPS}
    swaps = {"compiled_full_map": 0.25, "sklearn_assign": 0.5}
    costs = ReferenceCosts(4, per, {"kmeans_init": 3.0}, swaps)
    assert costs.seconds(10) == pytest.approx(3.0 + 10 * len(REFERENCE_STEPS))
    saved = sum(per[s] - swaps[w] for s, w in LOWER_BOUND_SWAPS.items())  # 0.75 + 0.75 + 0.5
    assert costs.seconds(10, lower_bound=True) == pytest.approx(costs.seconds(10) - 10 * saved)


def test_fastvlad_seconds_model() -> None:
    train = {"images": 10, "classifier_seconds": 2.0, "codebook_images": 4, "params": {"codebook_images": 4},
             "codebook_pass": {"cnn": 0.6, "points": 0.04, "hypercolumns": 0.16, "kmeans": 5.0}}
    enc = {"images": 10, "seconds": 3.0, "stage_seconds": {"cnn": 1.5, "points": 0.2, "hypercolumns": 0.1}}
    # 4 codebook images × 0.2 s (the pass's own gather, not the encoder's) + 5 s k-means
    # + N × (0.3 s encode + 0.2 s classifier)
    assert bench.fastvlad_seconds(100, train, enc) == pytest.approx(0.8 + 5.0 + 50.0)
    assert bench.fastvlad_seconds(2, train, enc) == pytest.approx(0.4 + 5.0 + 1.0)
    # the measured fit on its 10 images less the model there (0.8 + 5 + 10 × 0.5): a fixed setup cost
    assert bench.fit_setup_seconds({**train, "seconds": 13.8}, enc) == pytest.approx(3.0)
    assert bench.fit_setup_seconds({**train, "seconds": 9.0}, enc) == 0.0
    # The copies grow with the images (they had been counted in the fixed setup), and the head is its
    # fixed cost + its rows' (its time per image at 10 images had been scaled up as if all per image).
    train.update(copies_seconds=1.0, head_cost={"fixed_seconds": 1.9, "per_row_seconds": 0.005, "rows_per_image": 2.0})
    assert bench.fastvlad_seconds(100, train, enc) == pytest.approx(0.8 + 5.0 + 100 * (0.3 + 0.1) + 1.9 + 100 * 0.01)


def test_head_cost_separates_fixed_from_per_row() -> None:
    """``head_cost`` times the head on the training rows (images and copies) and on twice as many."""
    from . import tiny_model

    model = tiny_model.fitted_copy(zoom=(1.2,), augment=1)
    images, labels = tiny_model.demo_images()
    cost = bench.head_cost(model, tiny_model.fitted().transform(list(images)), labels, repeats=1)
    assert cost["rows_per_image"] == 3.0 and cost["fixed_seconds"] >= 0 and cost["per_row_seconds"] >= 0
    assert cost["fixed_seconds"] + cost["per_row_seconds"] * 3 * len(labels) > 0


def test_stratified_subset_holds_every_class() -> None:
    labels = np.array(["a"] * 10 + ["b"] * 3 + ["c"] * 1)
    idx = bench.stratified(labels, 5)
    assert len(idx) == 5 and set(labels[idx]) == {"a", "b", "c"} and list(idx) == sorted(idx)


def test_command_repeats_the_options() -> None:
    assert bench.BenchConfig().command() == "fastvlad bench"
    cfg = bench.BenchConfig(images=200, k=100, faithful=False, data=Path("my data"))
    assert cfg.command() == "fastvlad bench --images 200 --data 'my data' --k 100 --no-faithful"
    half = bench.BenchConfig(fp16=True)
    assert half.command() == "fastvlad bench --fp16" and bench.make_estimator(half).fp16 is True
    assert bench.make_estimator(half, faithful=True).fp16 is True


def test_bench_precision_int8_compares_in_one_run(vgg16_path: Path, tmp_path: Path) -> None:
    """``fastvlad bench --precision int8``: the issue-15 keys, from interleaved rounds, and their report."""
    out = tmp_path / "int8.json"
    res = CliRunner().invoke(app, ["-q", "bench", *TINY, "--no-faithful", "--no-peers", "--precision", "int8",
                                   "--precision-rounds", "2", "--json", str(out)])
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    assert r["settings"]["precision"] == "int8" and r["command"].endswith("--precision int8 --precision-rounds 2")
    for key in ("cnn_int8_speedup", "encode_int8_images_per_s", "post_cnn_fraction_int8",
                "encode_fp32_images_per_s", "post_cnn_fraction_fp32"):
        assert r[key] > 0, key
    cnn = r["precision_comparison"]["cnn"]
    assert len(cnn["int8_speedup"]["rounds"]) == 2 and cnn["images"] == 4
    assert r["cnn_int8_speedup"] == pytest.approx(np.median(np.array(cnn["int8_images_per_s"]["rounds"])
                                                            / np.array(cnn["fp32_images_per_s"]["rounds"])))
    assert "(e) float32 against int8" in res.output and "speed-up" in res.output


def test_bench_precision_is_checked() -> None:
    with pytest.raises(ParameterError, match="precision='int4'"):
        bench.check_config(bench.BenchConfig(precision="int4"))
    with pytest.raises(ParameterError, match="disagree"):
        bench.check_config(bench.BenchConfig(precision="int8", fp16=True))


def test_config_checks_name_the_option(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="--reference-images 1"):
        bench.check_config(bench.BenchConfig(reference_images=1))
    with pytest.raises(ParameterError, match="--data"):
        bench.check_config(bench.BenchConfig(data=tmp_path / "missing"))


@pytest.mark.parametrize("option, match", [
    ({"demo_size": "abc"}, "--demo-size='abc': give N"),  # was an unexpected ValueError
    ({"demo_size": "32x32x3"}, "--demo-size='32x32x3'"),  # was cut to 32x32
    ({"demo_size": "100000x100000"}, "--demo-size 100000x100000: .* at most 16777216 pixels"),  # out of memory
    ({"demo_size": "8x8"}, "--demo-size 8x8: each side must be at least 16"),
    ({"batch_size": -4}, "--batch-size=-4: must be an integer ≥ 1"),  # was a ZeroDivisionError after the CNN
    ({"seed": -1}, "--seed=-1: must be an integer from 0 to 4294967295"),
    ({"seed": 10**23}, "--seed=100000000000000000000000: must be an integer from 0"),  # was an XGBoostError
    ({"images": 10**14}, "--images 100000000000000: at most 100000 demo images"),  # wrote PNGs without end
])
def test_config_bounds_every_option(option: dict, match: str) -> None:
    with pytest.raises(ParameterError, match=match):
        bench.check_config(bench.BenchConfig(**option))


def test_bad_estimator_option_fails_before_any_image(tmp_path: Path) -> None:
    """A model setting the estimator refuses fails before the demo images are written (it had
    failed after the CNN stage)."""
    with pytest.raises(ParameterError, match="density=0"):
        bench.run(bench.BenchConfig(density=0.0), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_outputs_checked_against_the_data_before_the_work(tmp_path: Path) -> None:
    """``--json`` naming the ``--data`` manifest had replaced it with the report (exit 0)."""
    from PIL import Image

    for i, label in enumerate("abab"):
        Image.fromarray(np.full((32, 32), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\n" + "".join(f"{i}.png,{c}\n" for i, c in enumerate("abab")))
    before = manifest.read_bytes()
    for extra in (["--json", str(manifest)], ["--json", str(tmp_path / "0.png")],
                  ["--scaling", "--plots", str(manifest)]):
        res = CliRunner().invoke(app, ["-q", "bench", "--data", str(manifest), "--images", "4", *extra])
        assert isinstance(res.exception, WriteError), res.output
        assert re.search("refusing to write|is a file", str(res.exception)) and "bench:" not in res.output
    assert manifest.read_bytes() == before


def test_peak_rss_sees_an_allocation() -> None:
    with PeakRSS() as mem:
        a = np.ones(50_000_000, dtype=np.float32)  # 200 MB, touched
        del a
    assert mem.delta > 150e6


def test_peers_agree_on_inertia() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 10, (8, 16))
    x = (centres[rng.integers(8, size=4000)] + rng.normal(size=(4000, 16))).astype(np.float32)
    peers = run_peers(x, 8, 0)
    assert {"fastvlad", "sklearn_minibatch"} <= set(peers)
    best = min(p["inertia"] for p in peers.values())
    assert peers["fastvlad"]["inertia"] <= 1.5 * best  # well-separated blobs: all find them


def test_streaming_growth_and_plots(tmp_path: Path) -> None:
    assert image_counts(64, 8) == [8, 16, 32, 64] and image_counts(40, 8) == [8, 16, 32, 40]
    assert image_counts(4, 8) == [2, 4] and image_counts(1, 8) == [1]
    points = [{"series": "images", "value": n, "images": n, "ms_per_image": 100.0, "peak_rss_bytes": 1000 + 10 * n,
               "rss_increase_bytes": 10 * n, "codes_bytes": 5 * n} for n in (4, 8)]
    points.append({"series": "image_size", "value": "native", "images": 8, "ms_per_image": 90.0,
                   "peak_rss_bytes": 1, "rss_increase_bytes": 1, "codes_bytes": 1})
    g = streaming_growth(points)
    assert g["peak_rss_growth_bytes"] == 40 and g["codes_growth_bytes"] == 40 and g["working_growth_bytes"] == 0
    written = plot_scaling(points, tmp_path)
    assert [p.name for p in written] == ["scaling_images.png", "scaling_image_size.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)


@pytest.mark.slow
def test_bench_scaling_end_to_end(vgg16_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    res = CliRunner().invoke(app, ["-q", "bench", *TINY, "--no-faithful", "--no-peers", "--scaling",
                                   "--scaling-images", "4", "--json", str(out), "--plots", str(tmp_path)])
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    assert {p["series"] for p in r["scaling"]} == {"images", "density", "k", "image_size"}
    assert [p["value"] for p in r["scaling"] if p["series"] == "density"] == [1.0, 5.0, 10.0, 25.0]
    assert (tmp_path / "scaling_k.png").is_file()
