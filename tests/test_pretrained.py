"""The bundled BUSI model loads, predicts, and segments BUSI images it never saw.

The bundled model was trained on folds 1-4 of BUSI's folds.csv only (its
inference.json says so), so fold-0 images are unseen.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from bcseg import io
from bcseg.metrics import dice
from bcseg.pretrained import CITATION, pretrained_info, pretrained_path

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_bundled_model_is_small_and_cites_busi():
    path = pretrained_path()
    assert path.stat().st_size < 10e6
    info = pretrained_info()
    assert info["citation"] == CITATION and "10.1016/j.dib.2019.104863" in CITATION
    assert "fold 0" in info["trained_on"] and "never seen" in info["trained_on"]
    assert info["input_size"] == 128 and 0 < info["threshold"] < 1


def test_bundled_model_loads_safely_and_predicts_any_size():
    from bcseg.predict import load_model, predict_volume

    model = load_model(pretrained_path())
    image = np.random.default_rng(0).integers(0, 255, (77, 131), dtype=np.uint8)
    mask, prob = predict_volume(model, image, input_size=128)
    assert mask.shape == image.shape and prob.dtype == np.float32
    assert 0 <= prob.min() and prob.max() <= 1


def _first_fold0_lesions(busi_root, n=3):
    with open(busi_root / "folds.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle)
                if r["fold"] == "0" and r["class"] in ("benign", "malignant")]
    return rows[:n]  # the first in the file's order: no picking of easy cases


def test_bundled_model_segments_unseen_busi_images(busi_root, tmp_path):
    from bcseg.cli import main

    rows = _first_fold0_lesions(busi_root)
    inputs = [str(busi_root / r["image"]) for r in rows]
    assert main(["predict", *inputs, "--out", str(tmp_path)]) == 0  # no --model: bundled
    scores = []
    for row in rows:
        stem = io.file_stem(row["image"])
        predicted = io.read_mask(tmp_path / f"{stem}_mask.tif")
        truth = None
        for path in sorted((busi_root / row["image"]).parent.glob(f"{stem}_mask*.png")):
            mask = io.read_mask(path)
            truth = mask if truth is None else truth | mask
        scores.append(dice(predicted, truth))
    print("Dice on", [r["image"] for r in rows], scores)
    assert np.mean(scores) > 0.6, scores
