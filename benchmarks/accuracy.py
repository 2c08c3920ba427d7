"""Issue 14: accuracy on micrographs of new series, for every variant of the encoder and the head.

    python benchmarks/accuracy.py [--data ../shared/datasets/nanofiber-sem] [--out accuracy.md] [--json rows.json]
        [--only "text|=exact name"] [--fit-per-fold]

On the shared nanofiber set (1,035 tiles, 46 source micrographs, 8 material series), every
variant is scored two ways with one encoding of the images (``evaluate.encode_images``: the PCA
and codebook fitted once on a sample of all images, labels unused):

- leave-one-series-out (``cross_validate(split=series)``): trained on 7 series, tested on the 8th,
  each series held out once — what a user sees on a new sample; mean, spread and per series;
- grouped 5-fold (``cross_validate(groups=group)``): tiles of one micrograph never on both sides.

For the variants marked ``shift``, the shift check (``evaluate.shift_check``: 200 out-of-fold
images, stratified by series and class, re-predicted under each acquisition change of
``intensity.SHIFTS``) gives the share of predictions each change flips, and of the right ones the
share it makes wrong (``evaluate.changed_shares``); its control
(``intensity.CONTROLS``: one gray level at one pixel, which draws the image's points anew) gives
what re-drawing the points alone flips, and is left out of "max flip". ``--fit-per-fold`` checks
what the shared codebook costs the estimate: leave-one-series-out with each fold a whole ``fit`` on
the other series and a ``predict`` of the held-out one. "train s" is one fit on
every image: its codebook pass and encoding (from the CV encoding's timings) plus the head on all
codes; "non-CNN / CNN" is everything but the CNN passes over the CNN's time in that fit. Variants
sharing an encoder share its encoding (and its timings): augmented copies and flips are encoded
once and left out of the variants that do not use them. A variant with ``scales`` (not an
estimator parameter) puts the codes of one encoding per input size side by side, each with its
own codebook, scaled by 1/sqrt(n): how multi-scale codes were measured before becoming an option.
A variant with ``pooled_scales`` puts every input size's points into one codebook instead
(``pooled``): one VLAD per image over its points at every size. A variant with ``early_stopping``
(a patience in rounds; not an estimator parameter) chooses XGBoost's rounds per outer fold by early
stopping on a group split of that fold's training images (``early_stopped``). A variant with ``stretch``
(percentiles) sets ``intensity.STRETCH_PERCENTILES`` while it runs, one with ``stretch_smooth`` (σ px)
reads the stretch's percentiles from a smoothed copy (``stretch_of_smoothed``), one with ``tap_norm``
divides each tap or channel by its mean over the image (``TapNormalized``), one with
``stretch_at_input`` stretches the resized image instead of the image at its own resolution
(``stretched_after_resize``), one with ``pre_blur`` (σ px) stretches the image blurred first
(``stretch_of_blurred``), one with ``median_gamma`` also takes the stretched image's median to
mid-gray by a gamma (``stretch_median_gamma``), and one with
``jitter_blur_noise`` also blurs and noises the augmented copies, and one with ``exposure_views`` (n)
averages at predict over n more views, each re-exposed, blurred and noised by a seeded draw
(``ExposedView``) (``variant_knobs``): how such settings were measured without becoming parameters. A variant with ``head_on_views`` fits the logistic head on every training image's
flips too, the views it averages at predict (``head_on_views``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from head_check import command_line

from fastvlad import (
    classifier,
    codebook,
    datasets,
    images,
    intensity,
    vlad,
)
from fastvlad.classifier import BoosterSettings, balanced_weights
from fastvlad.encoder import (
    COPY_STAGES,
    Encoded,
    Encoder,
    Reduce,
    Timings,
    View,
    Workspace,
    copies_cnn_seconds,
    fit_centres,
)
from fastvlad.estimator import FastVLAD
from fastvlad.evaluate import CodeSet, cross_validate, encode_images, folds, shift_check
from fastvlad.images import flipped

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "datasets" / "nanofiber-sem"

#: 0.1.0's defaults: 224×224 squashed, no normalisation, XGBoost (100 rounds, depth 3, 32 bins).
OLD = dict(image_size=224, aspect="squash", normalize="none", classifier="xgboost", class_weight=None)
#: The variants: name → estimator parameters and whether to run the shift check. Each variant's
#: parameters are over FastVLAD's defaults with the logistic head (``LOGISTIC``), the default of runs
#: 1–30 that they were measured against ("the default" in their names); run 31's set the ridge head.
#: Every variant but the default is scored without flips at predict (``tta=0``), as it was measured.
LOGISTIC: dict[str, Any] = {"classifier": "logistic"}
#: Run 51's default, named in full (every row is merged over ``LOGISTIC`` and the defaults before it).
DEFAULT_51: dict[str, Any] = {"classifier": "ridge", "alpha": 20.0, "zoom": (1.2,), "zoom_jitter": True}
T0: dict[str, Any] = {"tta": 0}
VARIANTS: list[tuple[str, dict[str, Any], bool]] = [
    ("0.1.0 default: none, 224×224, xgboost", {**T0, **OLD}, True),
    ("none, 112 short side, xgboost", dict(T0, normalize="none", classifier="xgboost", class_weight=None), False),
    ("none, 112, logistic balanced", dict(T0, normalize="none"), False),
    ("stretch, 112, xgboost", dict(T0, classifier="xgboost", class_weight=None), False),
    ("stretch, 112, xgboost balanced", dict(T0, classifier="xgboost"), False),
    ("stretch, 112, xgboost balanced, colsample_bynode 0.3", dict(T0, classifier="xgboost", colsample_bynode=0.3),
     False),
    ("stretch, 112, logistic (not balanced)", dict(T0, class_weight=None), False),
    ("stretch, 112, logistic balanced, tta 0", dict(T0), True),
    ("stretch, 112, logistic C=10 balanced", dict(T0, C=10.0), False),
    ("stretch, 112, logistic balanced, augment 1", dict(T0, augment=1), False),
    ("**stretch, 112, logistic balanced, tta 1 (the default)**", dict(), True),
    ("stretch, 112, logistic balanced, tta 3 (every flip)", dict(tta=3), True),
    ("stretch, 112, logistic balanced, augment 1 and tta 1", dict(augment=1), True),
    ("stretch, 160 short side (160×234), logistic balanced", dict(T0, image_size=160), False),
    ("stretch, 224 short side (224×328), logistic balanced", dict(T0, image_size=224), False),
    ("stretch, 112, logistic balanced, power normalisation", dict(T0, power=True), False),
    ("equalize, 112, logistic balanced", dict(T0, normalize="equalize"), False),
    ("clahe, 112, logistic balanced", dict(T0, normalize="clahe"), False),
    # Run 6: around the default (tta 1), one setting changed at a time.
    ("the default, k 50", dict(k=50), False),
    ("the default, k 200", dict(k=200), False),
    ("the default, pca 32", dict(pca=32), False),
    ("the default, pca 128", dict(pca=128), False),
    ("the default, logistic C=1000", dict(C=1000.0), False),
    ("the default at int8", dict(precision="int8"), True),
    ("the default, codes of 112 and 80 short side concatenated", dict(scales=(112, 80)), False),
    ("the default, codes of 112 and 160 short side concatenated", dict(scales=(112, 160)), False),
    ("the default at int8, calibrated on 16 of the nanofiber tiles", dict(precision="int8", calibration=str(DATA)),
     False),
    ("the default at int8, seed 1", dict(precision="int8", random_state=1), False),
    ("the default at int8, seed 2", dict(precision="int8", random_state=2), False),
    ("the default, seed 1", dict(random_state=1), False),
    ("the default, seed 2", dict(random_state=2), False),
    # Run 8: XGBoost's regularisation (at tta 0, as the XGBoost rows of run 1).
    ("stretch, 112, xgboost balanced, subsample 0.5", dict(T0, classifier="xgboost", subsample=0.5), False),
    ("stretch, 112, xgboost balanced, min_child_weight 5", dict(T0, classifier="xgboost", min_child_weight=5.0),
     False),
    ("stretch, 112, xgboost balanced, subsample 0.5, min_child_weight 5, colsample_bynode 0.1",
     dict(T0, classifier="xgboost", subsample=0.5, min_child_weight=5.0, colsample_bynode=0.1), False),
    ("the default, points of 112 and 80 short side in one codebook", dict(pooled_scales=(112, 80)), False),
    ("the default, points of 112 and 160 short side in one codebook", dict(pooled_scales=(112, 160)), False),
    ("the default, points of 112 and 80 short side in one codebook, seed 1", dict(pooled_scales=(112, 80), random_state=1),
     False),
    ("the default, points of 112 and 80 short side in one codebook, seed 2", dict(pooled_scales=(112, 80), random_state=2),
     False),
    # Run 11: how many points per image (the points are drawn anew whenever the pixels change).
    ("the default, density 20 (10,000 points per image)", dict(density=20.0), True),
    ("the default, every pixel (density 40: 20,000 points, more than 112×164)", dict(density=40.0), True),
    # Run 13: which VGG16 taps (a first tap coarser than the input works since 0f8d7d3).
    ("the default, taps block2–5 (no block1_conv2)",
     dict(taps=("block2_conv2", "block3_conv3", "block4_conv3", "block5_conv3")), False),
    ("the default, taps block3–5", dict(taps=("block3_conv3", "block4_conv3", "block5_conv3")), False),
    ("the default, taps block1–4 (no block5_conv3)",
     dict(taps=("block1_conv2", "block2_conv2", "block3_conv3", "block4_conv3")), False),
    # Run 14: the shift check's control (every variant with a shift check has it since run 14).
    ("the default, with the shift check's control", dict(), True),
    ("the default at tta 0, with the shift check's control", dict(T0), True),
    # Run 15: the points drawn once per image size, not per image (a change of gray levels keeps them).
    ("the default, points shared per image size", dict(points="shared"), True),
    ("the default, points shared per image size, seed 1", dict(points="shared", random_state=1), False),
    ("the default, points shared per image size, seed 2", dict(points="shared", random_state=2), False),
    # Run 18: XGBoost on the default's codes (stretch, 112, the mirror), 100 rounds or early stopped.
    # Run 19: the stretch's percentiles (offset −20 clips the darkest pixels: a quarter of ppc3's tiles).
    ("the default, stretch 2nd–98th percentile", dict(stretch=(2.0, 98.0)), True),
    ("the default, stretch 5th–95th percentile", dict(stretch=(5.0, 95.0)), True),
    ("stretch, 112, xgboost balanced, tta 1", dict(classifier="xgboost"), False),
    ("stretch, 112, xgboost balanced, tta 1, rounds by early stopping (patience 20, up to 200)",
     dict(classifier="xgboost", early_stopping=20), False),
    # Run 20: the head fitted on the views it averages at predict (the image and its flips).
    *((f"the default, the head also fitted on the mirror{s}", dict(head_on_views=True, random_state=seed), False)
      for seed, s in ((0, ""), (1, ", seed 1"), (2, ", seed 2"))),
    *((f"tta 3, the head fitted on every flip{s}", dict(tta=3, head_on_views=True, random_state=seed), False)
      for seed, s in ((0, ""), (1, ", seed 1"), (2, ", seed 2"))),
    # Run 24: augmented copies also blurred and noised (the shift check's largest flips are blur and noise).
    ("stretch, 112, logistic balanced, augment 1 (with blur and noise) and tta 1",
     dict(augment=1, jitter_blur_noise=True), True),
    # Run 21: a codebook from more images (the seed's spread is partly its 100-image sample), whitened PCA axes.
    *((f"the default, codebook on 300 images{s}", dict(codebook_images=300, random_state=seed), False)
      for seed, s in ((0, ""), (1, ", seed 1"), (2, ", seed 2"))),
    ("the default, whitened PCA axes", dict(whiten=True), False),
    # Run 25: the stretch's percentiles read from a Gaussian-smoothed copy (blur and noise move the
    # 1st and 99th percentiles of the pixels by 3–10 % of the range, of the smoothed copy by 0.2–2.5 %).
    *((f"the default, stretch percentiles of the image smoothed by σ = {sigma} px", dict(stretch_smooth=sigma), True)
      for sigma in (1.5, 3.0)),
    # Run 26: each tap (or each channel of it) divided by its mean over the image before the
    # hypercolumns: an acquisition that changes the activations' scale changes them no more.
    ("the default, each tap divided by its mean over the image", dict(tap_norm="tap"), True),
    ("the default, each channel divided by its mean over the image", dict(tap_norm="channel"), True),
    # Run 28: smaller inputs alone (only beside 112 until now): half the CNN's pixels at 80.
    *((f"the default at {side} short side{s}", dict(image_size=side, random_state=seed), seed == 0)
      for side in (96, 80) for seed, s in ((0, ""), (1, ", seed 1"), (2, ", seed 2"))),
    # Run 29: seeds 3 and 4 of the default and of its closest rival (runs 12, 16), for a tighter spread.
    *((f"the default, seed {seed}", dict(random_state=seed), False) for seed in (3, 4)),
    *((f"the default, points of 112 and 80 short side in one codebook, seed {seed}",
       dict(pooled_scales=(112, 80), random_state=seed), False) for seed in (3, 4)),
    # Run 31: a ridge classifier as the head (least squares onto ±1 targets, L2 strength alpha),
    # alpha chosen among 3–30 at seeds 0–2 on cached codes (a scratch scan), seeds 3–4 unseen by it.
    *((f"the default with the ridge head, alpha {alpha:g}{s}", dict(classifier="ridge", alpha=alpha, random_state=seed),
       alpha == 10.0 and seed == 0)
      for alpha in (5.0, 10.0, 20.0)
      for seed, s in ((0, ""), (1, ", seed 1"), (2, ", seed 2"), (3, ", seed 3"), (4, ", seed 4"))),
    # Run 33: the ridge head on the steadier encodings of runs 15 and 24, for the shift check's
    # largest flips left (noise, offset −20, gamma 1.25).
    *((f"the ridge head, points shared per image size{s}", dict(classifier="ridge", points="shared", random_state=seed),
       seed == 0) for seed, s in ((0, ""), (1, ", seed 1"), (2, ", seed 2"))),
    *((f"the ridge head, augment 1 (with blur and noise){s}",
       dict(classifier="ridge", augment=1, jitter_blur_noise=True, random_state=seed), seed == 0)
      for seed, s in ((0, ""), (1, ", seed 1"), (2, ", seed 2"))),
    # Run 34: the ridge head at int8 (runs 6 and 10 measured int8 with the logistic head).
    *((f"the ridge head at int8{s}", dict(classifier="ridge", precision="int8", random_state=seed), False)
      for seed, s in ((0, ""), (1, ", seed 1"), (2, ", seed 2"))),
    # Run 35: the stretch read from and applied to the network input (the image resized first), not
    # the image at its own resolution: resizing 306 → 112 rows averages noise and blur away first.
    *((f"the ridge head, stretched after resizing{s}", dict(classifier="ridge", stretch_at_input=True,
                                                           random_state=seed), seed == 0)
      for seed, s in ((0, ""), (1, ", seed 1"), (2, ", seed 2"))),
    # Run 36: with the ridge head, the augmented copies of run 1 (flip, gain, offset, gamma; the
    # logistic head gained nothing from them) and VLAD's classic normalisation (no per-centre L2,
    # signed square root, global L2) in place of the paper's.
    *((f"the ridge head, one jittered copy per image{s}", dict(classifier="ridge", augment=1, random_state=seed),
       seed == 0)
      for seed, s in ((0, ""), (1, ", seed 1"), (2, ", seed 2"))),
    *((f"the ridge head, power normalisation without the per-centre L2{s}",
       dict(classifier="ridge", intra=False, power=True, random_state=seed), seed == 0)
      for seed, s in ((0, ""), (1, ", seed 1"), (2, ", seed 2"))),
    # Run 37: the head also fitted on every training image at other input sizes (``zoom``), as at
    # other magnifications: the series' micrographs differ in magnification by 2–4×. Chosen on a
    # scratch scan of seeds 0–2 (the codes at 160 and 80 of the 112 codebook), seeds 3–4 unseen.
    *((f"the ridge head, alpha {alpha:g}, zoom {'/'.join(map(str, zoom))}{s}",
       dict(classifier="ridge", alpha=alpha, zoom=zoom, random_state=seed), seed == 0 and alpha == shift_alpha)
      for zoom, seeds, shift_alpha in (((1.4, 0.7), (0, 1, 2, 3, 4), 20.0), ((1.4,), (0, 1, 2, 3, 4), 40.0))
      for seed, s in ((seed, f", seed {seed}" if seed else "") for seed in seeds)
      for alpha in (10.0, 20.0, 40.0)),
    # Run 38: the shift check of zoom 1.4 and 0.7 at alpha 40 (run 37 checked alpha 20 only): are its
    # flips the zoom's, or a head less regularised for three times the rows?
    ("the ridge head, alpha 40, zoom 1.4/0.7, shift check", dict(classifier="ridge", alpha=40.0, zoom=(1.4, 0.7)), True),
    # Run 40: the image also at 0.7 times the input size among the views averaged at predict
    # (``tta_zoom``; no cost at fit). Chosen on a scratch scan of seeds 0–2 on cached codes (views at
    # 0.5, 0.7, 0.86 and 1.4 times; 0.7 with and without its mirror), seeds 3–4 unseen by it.
    *((f"the ridge head, tta_zoom 0.7{s}", dict(classifier="ridge", tta_zoom=(0.7,), random_state=seed), seed == 0)
      for seed, s in ((0, ""), (1, ", seed 1"), (2, ", seed 2"), (3, ", seed 3"), (4, ", seed 4"))),
    *((f"the ridge head, alpha 40, zoom 1.4/0.7, tta_zoom 0.7{s}",
       dict(classifier="ridge", alpha=40.0, zoom=(1.4, 0.7), tta_zoom=(0.7,), random_state=seed), seed == 0)
      for seed, s in ((0, ""), (1, ", seed 1"), (2, ", seed 2"), (3, ", seed 3"), (4, ", seed 4"))),
    # Run 41: every image blurred by σ = 1 px at its own resolution before the stretch (the network
    # sees the blurred image): noise σ = 5 then moves the percentiles and the pixels far less, and a
    # blur of σ = 1 is one of √2 instead of a blur from none. Run 25 read the percentiles from a
    # smoothed copy but stretched the unsmoothed image.
    *((f"the ridge head, blurred σ = 1 px before the stretch{s}", dict(classifier="ridge", pre_blur=1.0,
                                                                      random_state=seed), seed == 0)
      for seed, s in ((0, ""), (1, ", seed 1"), (2, ", seed 2"))),
    # Run 46: one zoomed copy, at 0.7 only (the copies cost 0.49 of the images' own CNN pixels instead
    # of 2.45): does a cheaper set keep run 45's gain, and fit in less than 0.1.0's default's time?
    # Alpha 20 for twice the rows (10 for the images alone, 40 for three times them).
    *((f"the ridge head, alpha 20, zoom 0.7{s}", dict(classifier="ridge", alpha=20.0, zoom=(0.7,), random_state=seed),
       False) for seed, s in ((0, ""), (1, ", seed 1"), (2, ", seed 2"))),
    # Run 47: one zoomed copy at 1.2 (1.44 of the images' own CNN pixels): run 46's 0.7 alone gained
    # nothing, so the gain is the larger copy's; is a smaller one enough, at under 0.1.0's fit time?
    # Seeds 3–4 and the shift check (seed 0) added in run 48.
    *((f"the ridge head, alpha 20, zoom 1.2{s}", dict(classifier="ridge", alpha=20.0, zoom=(1.2,), random_state=seed),
       seed == 0) for seed, s in ((0, ""), (1, ", seed 1"), (2, ", seed 2"), (3, ", seed 3"), (4, ", seed 4"))),
    # Run 49: the zoomed copy also flipped and re-exposed (gain, offset, gamma) as ``augment``'s copies
    # are: the largest flips left are gamma 1.25, blur and noise; a steadier head at no extra CNN pass?
    # (Seeds 0–4 with the shared codebook were measured with a benchmark knob that made the copies as
    # ``zoom_jitter=True`` now does: the same seeds, the same copies.)
    *((f"the ridge head, alpha 20, zoom 1.2 jittered{s}", dict(classifier="ridge", alpha=20.0, zoom=(1.2,),
                                                                 zoom_jitter=True, random_state=seed), seed == 0)
      for seed, s in ((0, ""), (1, ", seed 1"), (2, ", seed 2"), (3, ", seed 3"), (4, ", seed 4"))),
    # Run 53: the default's jittered copy also blurred and noised (``jitter_blur_noise``), and with
    # gamma drawn from [2/3, 1.5] instead of [0.8, 1.25] (``jitter_gamma``): the largest flips left
    # are gamma 1.25 (at the edge of the jitter's range), blur and noise; no extra CNN pass.
    *((f"the ridge head, alpha 20, zoom 1.2 jittered, blurred and noised{s}",
       dict(DEFAULT_51, jitter_blur_noise=True, random_state=seed), seed == 0)
      for seed, s in ((0, ""), (1, ", seed 1"), (2, ", seed 2"), (3, ", seed 3"), (4, ", seed 4"))),
    *((f"the ridge head, alpha 20, zoom 1.2 jittered, blurred and noised, gamma 2/3–1.5{s}",
       dict(DEFAULT_51, jitter_blur_noise=True, jitter_gamma=(2 / 3, 1.5), random_state=seed), seed == 0)
      for seed, s in ((0, ""), (1, ", seed 1"), (2, ", seed 2"), (3, ", seed 3"), (4, ", seed 4"))),
    # Run 54: the default's head at a larger alpha (a head that leans on the codes' larger directions
    # was steadier before: run 38's copies flipped 0.130 at alpha 40, 0.195 at alpha 20).
    # Seeds 3 and 4, and the shift check at seed 1 (with the default's, in its own row), added in run 55.
    *((f"the ridge head, alpha {a:g}, zoom 1.2 jittered{s}", dict(DEFAULT_51, alpha=a, random_state=seed),
       seed == 0 or (seed == 1 and a == 80.0))
      for a in (40.0, 80.0)
      for seed, s in ((0, ""), (1, ", seed 1"), (2, ", seed 2"), (3, ", seed 3"), (4, ", seed 4"))),
    ("the ridge head, alpha 20, zoom 1.2 jittered, seed 1, shift check", dict(DEFAULT_51, random_state=1), True),
    # Run 56: the default without block1's tap: noise σ = 5 is the one change that still makes right
    # answers wrong at alpha 40 and 80 (run 54), and the finest tap is the one pixel noise moves most.
    *((f"the ridge head, alpha 20, zoom 1.2 jittered, taps block2–5{s}",
       dict(DEFAULT_51, taps=("block2_conv2", "block3_conv3", "block4_conv3", "block5_conv3"), random_state=seed),
       seed == 0) for seed, s in ((0, ""), (1, ", seed 1"), (2, ", seed 2"))),
    # Run 60: every flip averaged at predict (``tta=3``, four views) with today's default: the changes
    # fall where the answers are borderline (run 58); does averaging more views move fewer across?
    ("the ridge head, alpha 20, zoom 1.2 jittered, tta 3", dict(DEFAULT_51, tta=3), True),
    # Run 61: the default's mean at predict also over views re-exposed, blurred and noised as the
    # shift check's changes are (``exposure_views``; one CNN pass each): a decision smoothed along
    # the very directions the changes move an image should move fewer answers across.
    ("the ridge head, alpha 20, zoom 1.2 jittered, 4 exposed views", dict(DEFAULT_51, exposure_views=4), True),
    # Run 66: the resize's filter (``resample``): blur σ = 1 px moves the 112-px input least of the
    # changes but the deepest tap most per unit (run 65); how much of the tile's fine texture reaches
    # the input is the filter's to decide.
    *((f"the ridge head, alpha 20, zoom 1.2 jittered, resample {r}", dict(DEFAULT_51, resample=r), True)
      for r in ("bicubic", "lanczos")),
    # Soft assignment (``softness``, the default since run 70): benchmarks/vlad_check.py (run 68) found
    # it steadier and more accurate on new series on one set of points at seeds 0 and 1; these rows
    # make the whole encoding at seeds 0–4 (run 72).
    *((f"the ridge head, alpha 20, zoom 1.2 jittered, softness {b:g}{s}", dict(DEFAULT_51, softness=b, random_state=seed),
       False) for b in (10.0,) for seed, s in ((0, ""), (1, ", seed 1"), (2, ", seed 2"), (3, ", seed 3"), (4, ", seed 4"))),
    # Run 73: gamma flips a fifth to a third of run 68's largest changes, and the stretch pins only the
    # 1st and 99th percentiles. A gamma that also takes the stretched image's median to mid-gray
    # (``median_gamma``) pins a third point: a raw gamma then moves the input only between them.
    *((f"the default (softness 10), stretched and the median to mid-gray{s}",
       dict(DEFAULT_51, softness=10.0, median_gamma=True, random_state=seed), True) for seed, s in ((0, ""), (1, ", seed 1"))),
]
#: Every variant before run 40 was measured without zoomed views at predict.
BEFORE_RUN_40: dict[str, Any] = {"tta_zoom": ()}
#: Every variant before run 45 was measured against the defaults of its time: no zoomed copies at fit
#: and, for the ridge head, alpha 10 (run 45 made ``zoom=(1.4, 0.7)``, ``alpha=40`` the default, run
#: 51 ``zoom=(1.2,)``, ``zoom_jitter=True``, ``alpha=20``; every variant since names its zoom and alpha).
BEFORE_RUN_45: dict[str, Any] = {"zoom": (), "alpha": 10.0}
#: Every variant before run 51 made ``zoom_jitter=True`` the default made its zoomed copies from the
#: images as they are (run 49's name ``zoom_jitter=True``).
BEFORE_RUN_51: dict[str, Any] = {"zoom_jitter": False}
#: Every variant before run 70 gave each point to its nearest centre (run 70 made ``softness=10`` the default).
BEFORE_RUN_70: dict[str, Any] = {"softness": None}
#: Every variant before run 94 fitted its linear head on the codes themselves (run 94 made
#: ``code_pca=64`` the default; ``alpha=None`` then means the codes' 20, as before).
BEFORE_RUN_94: dict[str, Any] = {"code_pca": None}
VARIANTS = [(name, {**LOGISTIC, **BEFORE_RUN_40, **BEFORE_RUN_45, **BEFORE_RUN_51, **BEFORE_RUN_70, **BEFORE_RUN_94,
                    **params}, shift)
            for name, params, shift in VARIANTS]
#: Benchmark-only knobs that change the codes (``variant_knobs``): part of an encoding's key.
ENCODER_KNOBS = ("stretch", "jitter_blur_noise", "jitter_gamma", "stretch_smooth", "tap_norm", "stretch_at_input",
                 "pre_blur", "exposure_views", "median_gamma")
#: Variant keys that are not estimator parameters (see the module's docstring).
BENCHMARK_ONLY = ("scales", "pooled_scales", "early_stopping", "head_on_views", *ENCODER_KNOBS)
#: Parameters that decide the codes (the rest only decide the head).
ENCODER_PARAMS = ("image_size", "aspect", "normalize", "density", "k", "pca", "whiten", "power", "intra",
                  "resample", "interpolation", "backbone", "taps", "codebook_images", "random_state", "precision",
                  "calibration", "points", "zoom", "zoom_jitter", "softness")


def estimators(params: dict[str, Any]) -> list[FastVLAD]:
    """The estimator of a variant; one per input size for a variant of concatenated ``scales``."""
    scales = params.get("scales")
    rest = {k: v for k, v in params.items() if k not in BENCHMARK_ONLY}
    return [FastVLAD(**rest, image_size=s) for s in scales] if scales else [FastVLAD(**rest)]


def encodings(params: dict[str, Any]) -> list[FastVLAD]:
    """The estimators whose ``encode_images`` a variant uses (none for ``pooled_scales``: it encodes its own)."""
    return [] if "pooled_scales" in params else estimators(params)


def pooled(params: dict[str, Any], X: list[str]) -> CodeSet:
    """Points of every input size of ``params["pooled_scales"]`` in one codebook: the PCA and k-means
    fitted on the sizes' codebook samples together (each size an equal share of the points), and each
    image's VLAD over all its points, the sizes' residual sums added before the normalisations (flips
    for ``tta`` the same way; no augmented copies)."""
    sizes = params["pooled_scales"]
    rest = {k: v for k, v in params.items() if k != "pooled_scales"}
    ests = [FastVLAD(**rest, image_size=s) for s in sizes]
    est, timings = ests[0], Timings()
    if est.augment:
        raise ValueError("pooled scales take no augmented copies")
    encoders = [Encoder.of(e) for e in ests]
    sample = np.concatenate([e.codebook_sample(X, int(est.codebook_images), timings=timings)[:: len(sizes)]
                             for e in encoders])
    proj, centres = fit_centres(sample, int(est.k), encoders[0].settings, timings)
    encoders = [dataclasses.replace(e, projection=proj, centres=centres) for e in encoders]

    def codes(sources: list[Any], clock: Timings) -> np.ndarray:
        sums = sum(residual_sums(e, sources, clock) for e in encoders)
        return vlad.normalise(sums, encoders[0].settings.intra, encoders[0].settings.power)

    all_codes = codes(X, timings)
    seconds, views = dict(timings.seconds), []
    for op in range(1, int(est.tta) + 1):
        t = time.perf_counter()
        views.append(codes(flipped(X, op), Timings()))
        seconds["tta"] = seconds.get("tta", 0.0) + time.perf_counter() - t
    indices = np.arange(len(X))
    return CodeSet(encoders[0], all_codes, indices, [], np.zeros((0, all_codes.shape[1]), np.float32),
                   np.zeros(0, np.int64), views, seconds)


def residual_sums(encoder: Encoder, sources: list[Any], timings: Timings) -> np.ndarray:
    """Every image's per-centre residual sums over its points: ``(n, k, p)`` float64 (every image must read)."""
    proj, centres = encoder.projection, encoder.centres
    assert centres is not None
    out = np.zeros((len(sources), *centres.shape))
    workspace = Workspace(encoder.backend)
    for batch in encoder.batches(sources):
        if batch.failed:
            raise ValueError(f"pooled scales need every image readable: {batch.failed[0][1]}")
        assert batch.points is not None  # Encoder.batches draws them
        taps, points = encoder.taps(batch.pixels, batch.points, timings)
        hc = encoder.hypercolumns(taps, points, batch.grid, workspace, timings, proj)
        t = time.perf_counter()
        labels = codebook.nearest_per_image(hc, centres, encoder.backend).reshape(hc.shape[:2])
        t = timings.add("assign", t)
        out[batch.indices] = vlad.residual_sums(hc, labels, centres, encoder.backend)
        timings.add("vlad", t)
        timings.images += len(batch.indices)
    return out


def encoder_key(est: FastVLAD, variant: dict[str, Any]) -> tuple[Any, ...]:
    params = est.get_params()
    return (*((p, str(params[p])) for p in ENCODER_PARAMS), *((k, str(variant.get(k))) for k in ENCODER_KNOBS))


@contextlib.contextmanager
def variant_knobs(variant: dict[str, Any]) -> Iterator[None]:
    """While the variant runs: ``intensity.STRETCH_PERCENTILES`` set to its ``stretch``; with
    ``jitter_blur_noise`` the augmented copies also blurred and noised, and with ``jitter_gamma``
    their gamma drawn from another range (``jitter_with``); with ``stretch_smooth`` the stretch's
    percentiles read from a smoothed copy (``stretch_of_smoothed``); with ``tap_norm`` every
    encoder's CNN wrapped in ``TapNormalized``; with ``stretch_at_input`` the stretch moved after the
    resize (``stretched_after_resize``); with ``pre_blur`` the image blurred before the stretch
    (``stretch_of_blurred``); with ``median_gamma`` the stretched image's median taken to mid-gray by a
    gamma (``stretch_median_gamma``)."""
    keep, jitter, stretch = intensity.STRETCH_PERCENTILES, intensity.jitter, intensity.NORMALIZATIONS["stretch"]
    resize = images.resize
    intensity.STRETCH_PERCENTILES = tuple(variant.get("stretch", keep))
    if variant.get("jitter_blur_noise") or variant.get("jitter_gamma"):
        intensity.jitter = functools.partial(jitter_with, gamma_range=tuple(variant.get("jitter_gamma", (0.8, 1.25))),
                                             blur_noise=bool(variant.get("jitter_blur_noise")))
    if variant.get("stretch_smooth"):
        intensity.NORMALIZATIONS["stretch"] = functools.partial(stretch_of_smoothed, sigma=variant["stretch_smooth"])
    if variant.get("pre_blur"):
        intensity.NORMALIZATIONS["stretch"] = functools.partial(stretch_of_blurred, sigma=variant["pre_blur"])
    if variant.get("median_gamma"):
        intensity.NORMALIZATIONS["stretch"] = stretch_median_gamma
    if variant.get("stretch_at_input"):
        intensity.NORMALIZATIONS["stretch"] = lambda values: values
        images.resize = stretched_after_resize  # type: ignore[assignment]
    of, views, encode_view = Encoder.__dict__["of"], FastVLAD.views, Encoder.encode_view
    if variant.get("exposure_views"):
        m = int(variant["exposure_views"])
        FastVLAD.views = lambda self: [*views(self), *(ExposedView(exposure=k) for k in range(1, m + 1))]  # type: ignore
        Encoder.encode_view = encode_exposed  # type: ignore[method-assign]
    if variant.get("tap_norm"):
        def tap_normalized(cls: type[Encoder], model: Any, *args: Any, **kwargs: Any) -> Encoder:
            encoder = of.__func__(cls, model, *args, **kwargs)
            return dataclasses.replace(encoder, cnn=TapNormalized(encoder.cnn, variant["tap_norm"]))

        Encoder.of = classmethod(tap_normalized)  # type: ignore[method-assign, assignment]
    try:
        yield
    finally:
        intensity.STRETCH_PERCENTILES, intensity.jitter = keep, jitter
        intensity.NORMALIZATIONS["stretch"] = stretch
        images.resize = resize  # type: ignore[assignment]
        Encoder.of = of  # type: ignore[method-assign]
        FastVLAD.views, Encoder.encode_view = views, encode_view  # type: ignore[method-assign]


@dataclasses.dataclass(frozen=True)
class TapNormalized:
    """A CNN whose every tap ``(n, h, w, C)`` is divided by its mean over each image (``per="tap"``)
    or over each image's channel (``"channel"``); anything else is the wrapped CNN's."""

    cnn: Any
    per: str

    def __call__(self, pixels: np.ndarray) -> list[np.ndarray]:
        axes = (1, 2, 3) if self.per == "tap" else (1, 2)
        return [t / (t.mean(axis=axes, keepdims=True) + np.float32(1e-6)) for t in self.cnn(pixels)]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.cnn, name)


def stretch_of_smoothed(values: np.ndarray, sigma: float) -> np.ndarray:
    """``intensity.stretch`` with its percentiles read from the image smoothed by a Gaussian of
    ``sigma`` px (the image itself is stretched unsmoothed)."""
    lo, hi = np.percentile(intensity.blur(values, sigma), intensity.STRETCH_PERCENTILES)
    return intensity.stretched_between(values, float(lo), float(hi))


_RESIZE = images.resize


def stretch_of_blurred(values: np.ndarray, sigma: float) -> np.ndarray:
    """``intensity.stretch`` of the image blurred by a Gaussian of ``sigma`` px first: the network sees
    the blurred image, and the percentiles are read from it."""
    return intensity.stretch(intensity.blur(values, sigma))


#: The gammas ``stretch_median_gamma`` may apply (the shared set's medians need 0.37–1.78).
MEDIAN_GAMMA_RANGE = (1 / 3, 3.0)


def stretch_median_gamma(values: np.ndarray) -> np.ndarray:
    """``intensity.stretch``, then 255·z^g with z the stretched image in 0..1 and g the gamma (within
    ``MEDIAN_GAMMA_RANGE``) that takes its median to 0.5 (float64, rounded once: as ``intensity.gamma``)."""
    z = intensity.stretch(values).astype(np.float64) / 255.0
    m = float(np.median(z))
    if not 0.0 < m < 1.0:
        return (255.0 * z).astype(np.float32)
    g = min(max(np.log(0.5) / np.log(m), MEDIAN_GAMMA_RANGE[0]), MEDIAN_GAMMA_RANGE[1])
    return (255.0 * z**g).astype(np.float32)


def stretched_after_resize(img: np.ndarray, size: tuple[int, int] | None, resample: str = "bilinear") -> np.ndarray:
    """``images.resize``, then ``intensity.stretch`` of the resized image (its percentiles and its clip)."""
    return intensity.stretch(_RESIZE(img, size, resample))


_JITTER = intensity.jitter


#: The first entry of an exposed view's seed: keeps its draws apart from the augmented copies'.
EXPOSED_VIEW = 0x45585031  # "EXP1"


@dataclasses.dataclass(frozen=True)
class ExposedView(View):
    """A view at predict (``exposure_views``): the image flipped and re-exposed, blurred and noised as
    ``jitter_with(blur_noise=True)`` draws it, seeded by ``EXPOSED_VIEW`` and ``exposure`` (≥ 1) alone,
    so every image gets the same draw."""

    exposure: int = 1


def exposed(values: np.ndarray, exposure: int) -> np.ndarray:
    """One image (float32 0..255) as the ``ExposedView`` ``exposure`` shows it."""
    rng = np.random.default_rng([EXPOSED_VIEW, exposure])
    return jitter_with(values, rng, gamma_range=(0.8, 1.25), blur_noise=True)


_ENCODE_VIEW = Encoder.encode_view


def encode_exposed(self: Encoder, sources: Any, view: View, timings: Timings | None = None,
                   label: str | None = None, reduce: Reduce | None = None) -> Encoded:
    """``Encoder.encode_view`` that also shows an ``ExposedView``: every source re-exposed first."""
    if isinstance(view, ExposedView):
        sources = [images.Transformed(s, functools.partial(exposed, exposure=view.exposure), f"exposed {view.exposure}")
                   for s in sources]
        view = View(view.op, view.zoom)
    return _ENCODE_VIEW(self, sources, view, timings, label, reduce)


def jitter_with(values: np.ndarray, rng: np.random.Generator, gamma_range: tuple[float, float],
                blur_noise: bool) -> np.ndarray:
    """``intensity.jitter`` with gamma from ``gamma_range``, then, with ``blur_noise``, a Gaussian
    blur of σ in [0, 1.5] px and Gaussian noise of σ in [0, 8] gray levels, drawn from the same
    generator."""
    values = _JITTER(values, rng, gamma_range=gamma_range)
    if not blur_noise:
        return values
    values = intensity.blur(values, float(rng.uniform(0.0, 1.5)))
    return intensity.noise(values, float(rng.uniform(0.0, 8.0)), seed=int(rng.integers(2**31)))


def concatenated(sets: list[CodeSet]) -> CodeSet:
    """The codes of several encodings of the same images side by side (each scale its own codebook),
    scaled by 1/sqrt(n) so that the whole stays unit length; augmented copies are not supported."""
    if any(len(cs.augmented) for cs in sets) or any(not np.array_equal(cs.indices, sets[0].indices) for cs in sets):
        raise ValueError("concatenated codes need the same readable images and no augmented copies")
    f = np.float32(1 / np.sqrt(len(sets)))
    codes = np.concatenate([cs.codes for cs in sets], axis=1) * f
    views = [np.concatenate([cs.views[i] for cs in sets], axis=1) * f for i in range(min(len(cs.views) for cs in sets))]
    seconds: dict[str, float] = {}
    for cs in sets:
        for stage, v in cs.seconds.items():
            seconds[stage] = seconds.get(stage, 0.0) + v
    return dataclasses.replace(sets[0], codes=codes, views=views, seconds=seconds,
                               augmented=np.zeros((0, codes.shape[1]), np.float32))


def without(cs: CodeSet, encoded: FastVLAD, est: FastVLAD) -> CodeSet:
    """``cs`` (the encoding of ``encoded``) with only the augmented copies and views the variant ``est``
    uses (its zoomed copies: always, as ``zoom`` is part of the encoding's key)."""
    keep = slice(None) if est.augment or est.zoom else slice(0, 0)  # the encodings hold at most what one variant uses
    have = encoded.views()[1:]
    return dataclasses.replace(cs, augmented=cs.augmented[keep], augmented_of=cs.augmented_of[keep],
                               views=[cs.views[have.index(view)] for view in est.views()[1:]])


def fit_seconds(est: FastVLAD, cs: CodeSet, y: np.ndarray) -> dict[str, float]:
    """One fit on every image: the CV encoding's codebook pass and encode timings, plus the head on all
    codes (and the augmented copies', when the variant uses them)."""
    t = time.perf_counter()
    labels = y[cs.indices]
    FastVLAD(**est.get_params()).fit_codes(np.concatenate([cs.codes, cs.augmented]),
                                          np.concatenate([labels, labels[cs.augmented_of]]))
    copies = COPY_STAGES  # the copies' seconds, and their CNN's: counted only when the variant uses them
    stages = {k: v for k, v in cs.seconds.items() if k not in ("tta", *copies, *(f"{c}_cnn" for c in copies))}
    head = time.perf_counter() - t
    extra = {c: cs.seconds.get(c, 0.0) if len(cs.augmented) else 0.0 for c in copies}
    total = sum(stages.values()) + sum(extra.values()) + head
    cnn = stages.get("cnn", 0.0) + (copies_cnn_seconds(cs.seconds) if len(cs.augmented) else 0.0)
    seconds = {**stages, **extra, "classifier": head}
    # "cnn" last: every CNN pass of the fit, the copies' too (the stage of that name is the images' alone)
    return {**seconds, "total": total, "cnn": cnn, "non_cnn_over_cnn": (total - cnn) / cnn if cnn else float("nan")}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=None, help="write the Markdown table here")
    ap.add_argument("--json", type=Path, default=None, help="write every number here")
    ap.add_argument("--only", default=None, help="run the variants whose name contains this text, or is it "
                    "exactly when it starts with '=' (several: separated by '|')")
    ap.add_argument("--shift-images", type=int, default=200)
    ap.add_argument("--fit-per-fold", action="store_true", help="leave-one-series-out only, each fold a whole "
                    "fit on the other series (codebook included) and a predict of the held-out one")
    args = ap.parse_args(argv)
    if not (args.data / "manifest.csv").is_file():
        sys.exit(f"no dataset at {args.data} (see ../shared/datasets/README.md)")
    ds = datasets.load(args.data)
    X, y, groups, series = [str(p) for p in ds.paths], ds.y, ds.groups, ds.column("series")
    variants = [v for v in VARIANTS if args.only is None or any(chosen(part, v[0]) for part in args.only.split("|"))]
    if args.fit_per_fold:
        rows = []
        for name, params, _ in variants:
            with variant_knobs(params):
                rows.append(fitted_per_fold(name, params, X, np.asarray(y), np.asarray(series)))
        return report(rows, args, argv)
    # Encode once per encoder, with the most augmented copies and flips any of its variants uses.
    need: dict[tuple[Any, ...], FastVLAD] = {}
    for _, params, _ in variants:
        for est in encodings(params):
            key = encoder_key(est, params)
            have = need.get(key)
            need[key] = est if have is None else have.set_params(
                augment=max(have.augment, est.augment), tta=max(have.tta, est.tta),
                tta_zoom=tuple(dict.fromkeys((*have.tta_zoom, *est.tta_zoom))))
    rows = []
    codesets: dict[tuple[Any, ...], CodeSet] = {}
    for name, params, shift in variants:
        with variant_knobs(params):
            rows.append(scored(name, params, shift, X, y, groups, series, need, codesets, args.shift_images))
    report(rows, args, argv)


def chosen(part: str, name: str) -> bool:
    """Whether ``--only``'s ``part`` picks the variant ``name``: ``=name`` exactly, else any name containing it."""
    return name == part[1:] if part.startswith("=") else part in name


def scored(name: str, params: dict[str, Any], shift: bool, X: list[str], y: Any, groups: Any, series: Any,
           need: dict[tuple[Any, ...], FastVLAD], codesets: dict[tuple[Any, ...], CodeSet],
           shift_images: int) -> dict[str, Any]:
    """One variant's row: leave-one-series-out, grouped 5-fold, the fit's seconds and the shift check
    (``shift``), on its encoder's codes (encoded into ``codesets`` when first needed)."""
    parts = []
    for est in encodings(params):
        key = encoder_key(est, params)
        if key not in codesets:
            t = time.perf_counter()
            codesets[key] = encode_images(need[key], X)
            print(f"encoded for {name}: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
        parts.append(without(codesets[key], need[key], est))
    cs = pooled(params, X) if "pooled_scales" in params else parts[0] if len(parts) == 1 else concatenated(parts)
    est = estimators(params)[0]  # the head's parameters (the same for every part)
    if "early_stopping" in params:
        return early_stopped(name, est, cs, np.asarray(y), np.asarray(series), np.asarray(groups),
                             int(params["early_stopping"]))
    if params.get("head_on_views"):
        return head_on_views(name, est, cs, np.asarray(y), np.asarray(series), np.asarray(groups))
    loso = cross_validate(est, X, y, split=series, split_name="series", codes=cs)
    grouped = cross_validate(est, X, y, groups=groups, n_splits=5, codes=cs)
    row: dict[str, Any] = {"variant": name, "params": params, "loso_mean": loso.accuracy,
                           "loso_min": float(np.min(loso.fold_accuracy)), "loso_max": float(np.max(loso.fold_accuracy)),
                           "loso_std": loso.accuracy_std, "loso_pooled": float(np.mean(loso.y_pred == loso.y_true)),
                           "loso": {f["held_out"]: f["accuracy"] for f in loso.per_fold()},
                           "grouped5_mean": grouped.accuracy, "grouped5_std": grouped.accuracy_std,
                           "train": fit_seconds(est, cs, np.asarray(y))}
    if shift:
        check = shift_check(loso, X, n_images=shift_images, random_state=0)
        row["shift"] = {c["name"]: c["flipped"] for c in check.changes}
        row["shift_lost"] = {c["name"]: c["lost"] for c in check.changes}
        row["shift_max"] = check.max_flipped
        row["shift_seconds"] = check.seconds
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def early_stopped(name: str, est: FastVLAD, cs: CodeSet, y: np.ndarray, series: np.ndarray, groups: np.ndarray,
                  patience: int, max_rounds: int = 200) -> dict[str, Any]:
    """XGBoost whose rounds are chosen per outer fold by early stopping on a group split of its training
    images: leave-one-series-out inside leave-one-series-out, and 4 grouped folds inside each of the
    grouped 5 folds. Each inner fit stops once the held-out part's log-loss has not fallen for
    ``patience`` rounds; the outer fold's head is then fit on all its training codes with the median
    of the inner best round counts, and predicts the mean over an image's flips (``tta``)."""
    settings = dataclasses.replace(BoosterSettings.of(est), n_estimators=max_rounds)
    seed = int(est.random_state)

    def fit(yi: np.ndarray, train: np.ndarray, rounds: int, held: np.ndarray | None = None) -> Any:
        import xgboost as xgb

        w = balanced_weights(yi[train], int(yi.max()) + 1) if est.class_weight == "balanced" else None
        dtrain = xgb.QuantileDMatrix(cs.codes[train], label=yi[train], weight=w, max_bin=settings.max_bin)
        evals = [(xgb.DMatrix(cs.codes[held], label=yi[held]), "held")] if held is not None else []
        return xgb.train(settings.params(int(yi.max()) + 1, "cpu", seed), dtrain, num_boost_round=rounds,
                         evals=evals, early_stopping_rounds=patience if held is not None else None, verbose_eval=False)

    def head(yi: np.ndarray, train: np.ndarray, inner: np.ndarray) -> tuple[Any, int]:
        best = [fit(yi, train[inner != g], max_rounds, train[inner == g]).best_iteration + 1 for g in np.unique(inner)]
        rounds = int(np.median(best))
        return fit(yi, train, rounds), rounds

    return own_folds(name, est, cs, y, series, groups, head, "rounds")


def head_on_views(name: str, est: FastVLAD, cs: CodeSet, y: np.ndarray, series: np.ndarray,
                  groups: np.ndarray) -> dict[str, Any]:
    """The logistic head fitted on the same views it averages over at predict: every training image
    and its ``tta`` flips, each a training row with the image's label (the flips' CNN passes, at fit)."""
    def head(yi: np.ndarray, train: np.ndarray, inner: np.ndarray) -> tuple[Any, int]:
        views = [cs.codes, *cs.views]
        codes = np.concatenate([v[train] for v in views])
        labels = np.tile(yi[train], len(views))
        ok = ~np.isnan(codes).any(axis=1)  # a flip that could not be read
        n_classes = int(yi.max()) + 1
        w = balanced_weights(labels[ok], n_classes) if est.class_weight == "balanced" else None
        return classifier.train_linear(est, codes[ok], labels[ok], n_classes, w), \
            len(views)

    return own_folds(name, est, cs, y, series, groups, head, "views at fit")


def own_folds(name: str, est: FastVLAD, cs: CodeSet, y: np.ndarray, series: np.ndarray, groups: np.ndarray,
              head: Any, info: str) -> dict[str, Any]:
    """Leave-one-series-out and grouped 5-fold (the folds ``cross_validate`` makes) with a head that
    ``cross_validate`` cannot fit: ``head(labels, train_rows, inner_groups) -> (head, what it chose)``,
    where the inner groups are the training rows' series (leave-one-series-out) or 4 grouped folds of
    them (grouped 5-fold). Each test image gets the mean over its flips (``tta``)."""
    labels = y[cs.indices].astype(str)
    yi = np.searchsorted(sorted(set(labels.tolist())), labels)
    s_ok, g_ok = series[cs.indices].astype(str), groups[cs.indices].astype(str)
    seed = int(est.random_state)

    def cv(outer: np.ndarray, inner_of: Any) -> tuple[np.ndarray, list[Any]]:
        pred, chosen = np.empty(len(yi), dtype=np.int64), []
        for f in np.unique(outer):
            train, test = np.flatnonzero(outer != f), np.flatnonzero(outer == f)
            fitted, what = head(yi, train, inner_of(train))
            chosen.append(what)
            pred[test] = mean_proba(fitted, [cs.codes[test], *(v[test] for v in cs.views)]).argmax(axis=1)
        return pred, chosen

    t0 = time.perf_counter()
    loso_fold = folds(yi, None, 0, seed, s_ok)
    loso_pred, loso_info = cv(loso_fold, lambda train: s_ok[train])
    grouped_fold = folds(yi, g_ok, 5, seed)
    grouped_pred, grouped_info = cv(grouped_fold, lambda train: folds(yi[train], g_ok[train], 4, seed))
    acc = {str(v): float(np.mean(loso_pred[s_ok == v] == yi[s_ok == v])) for v in np.unique(s_ok)}
    grouped = [float(np.mean(grouped_pred[grouped_fold == f] == yi[grouped_fold == f])) for f in range(5)]
    values = np.array(list(acc.values()))
    row = {"variant": name, "params": {k: str(v) for k, v in est.get_params().items()},
           "loso_mean": float(values.mean()), "loso_min": float(values.min()), "loso_max": float(values.max()),
           "loso_std": float(values.std()), "loso": acc, "grouped5_mean": float(np.mean(grouped)),
           "grouped5_std": float(np.std(grouped)), f"{info} (loso)": dict(zip(sorted(acc), loso_info)),
           f"{info} (grouped)": grouped_info, "seconds": time.perf_counter() - t0}
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def mean_proba(head: Any, views: list[np.ndarray]) -> np.ndarray:
    """A booster's class probabilities ``(n, C)`` averaged over an image's views (the image, its flips)."""
    return np.mean([classifier.predict_proba(head, v) for v in views], axis=0)


def fitted_per_fold(name: str, params: dict[str, Any], X: list[str], y: np.ndarray,
                    series: np.ndarray) -> dict[str, Any]:
    """Leave-one-series-out as a user meets it (``cross_validate(refit="all")``): per held-out series,
    ``fit`` on the other series (the PCA and codebook too, so the held-out series' pixels take no
    part) and ``predict`` the held-out one. About 5× the CNN passes of the shared encoding."""
    refused = set(params) & {"scales", "pooled_scales", "early_stopping", "head_on_views", "jitter_blur_noise",
                             "jitter_gamma"}
    if refused:
        raise SystemExit(f"{name}: {sorted(refused)} are benchmark-only settings, not estimator parameters; they "
                         "cannot be fitted per fold")
    params = {k: v for k, v in params.items() if k not in ("stretch", "exposure_views")}  # set by variant_knobs
    t0 = time.perf_counter()
    loso = cross_validate(FastVLAD(**params), X, y, split=series, split_name="series", refit="all")
    acc = {f["held_out"]: f["accuracy"] for f in loso.per_fold()}
    values = np.array(list(acc.values()))
    row = {"variant": f"{name}, fitted per fold", "params": params, "loso_mean": float(values.mean()),
           "loso_min": float(values.min()), "loso_max": float(values.max()), "loso_std": float(values.std()),
           "loso": acc, "seconds": time.perf_counter() - t0}
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def report(rows: list[dict[str, Any]], args: argparse.Namespace, argv: list[str] | None) -> None:
    """The Markdown table on stdout (and ``--out``), every number in ``--json``."""
    table = markdown(rows, command_line("accuracy.py", argv))
    print(table)
    if args.out:
        args.out.write_text(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


def markdown(rows: list[dict[str, Any]], command: str) -> str:
    series = sorted({s for r in rows for s in r["loso"]})
    shifts = sorted({s for r in rows for s in r.get("shift", {})})
    head = (["variant", "grouped 5-fold", "LOSO mean", "LOSO min–max (std)", *series, "max flip", "train s",
             "non-CNN / CNN"])
    lines = [f"`{command}` — {platform.node()}, {time.strftime('%Y-%m-%d %H:%M')}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        flip = f"{r['shift_max']:.3f}" if "shift_max" in r else "–"
        grouped = f"{r['grouped5_mean']:.3f} ± {r['grouped5_std']:.3f}" if "grouped5_mean" in r else "–"
        train = r.get("train", {})
        lines.append("| " + " | ".join([
            r["variant"], grouped, f"**{r['loso_mean']:.3f}**",
            f"{r['loso_min']:.2f}–{r['loso_max']:.2f} ({r['loso_std']:.2f})",
            *(f"{r['loso'].get(s, float('nan')):.2f}" for s in series), flip,
            f"{train['total']:.0f}" if train else "–",
            f"{train['non_cnn_over_cnn']:.2f}" if train else "–"]) + " |")
    if shifts:
        lines += ["", "Shift check (share of the 200 out-of-fold predictions each change flips):", "",
                  "| variant | " + " | ".join(shifts) + " |", "|---|" + "---|" * len(shifts)]
        for r in rows:
            if "shift" in r:
                lines.append(f"| {r['variant']} | " + " | ".join(f"{r['shift'][s]:.3f}" for s in shifts) + " |")
        lost = [r for r in rows if "shift_lost" in r]
        if lost:
            lines += ["", "Of those, the right predictions each change makes wrong (the share of the right ones):", "",
                      "| variant | " + " | ".join(shifts) + " |", "|---|" + "---|" * len(shifts)]
            lines += [f"| {r['variant']} | " + " | ".join(f"{r['shift_lost'][s]:.3f}" for s in shifts) + " |"
                      for r in lost]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
