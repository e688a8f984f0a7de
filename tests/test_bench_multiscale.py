"""benchmarks/multiscale.py: sizes from the trained one, averaged maps scored by hand."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import multiscale  # noqa: E402
from bcseg.rundir import InferenceSettings  # noqa: E402


def test_input_sizes_are_the_trained_size_scaled_to_a_multiple_of_16():
    assert [multiscale.input_size(160, f) for f in multiscale.FACTORS] == [128, 144, 160, 176, 192]
    assert multiscale.input_size(128, 0.9) == 112  # 115.2 px rounds to 7 x 16
    assert multiscale.COMBINATIONS[0] == (1.0,)  # the trained size alone is the baseline


def _image():
    truth = np.zeros((10, 10), bool)
    truth[2:6, 2:6] = True  # 16 pixels
    return ("benign (1)", "benign", np.zeros((10, 10), np.uint8), truth), truth


def test_averaged_maps_are_thresholded_and_scored_per_image():
    case, truth = _image()
    small = np.where(truth, 0.9, 0.1).astype(np.float16)
    large = np.zeros((10, 10), np.float16)
    large[2:6, 2:10] = 0.3  # the lesion and 16 pixels right of it
    maps = [{128: small, 160: large}]
    # 128 alone: exactly the lesion
    assert multiscale.per_image_dice([case], maps, [128], 0.5, ()) == {"benign (1)": 1.0}
    # mean of the two: lesion 0.6, right of it 0.2, elsewhere 0.05: the lesion at 0.5 ...
    assert multiscale.per_image_dice([case], maps, [128, 160], 0.5, ())["benign (1)"] == 1.0
    # ... and at 0.15 the 16 pixels right of it too: Dice 2 * 16 / (32 + 16) = 2/3
    dice = multiscale.per_image_dice([case], maps, [128, 160], 0.15, ())["benign (1)"]
    assert abs(dice - 2 / 3) < 1e-6


def test_the_threshold_is_chosen_on_validation_as_training_chooses_it():
    case, truth = _image()
    # 0.65 around the lesion, 0.9 in it: only the thresholds above 0.65 give the lesion alone
    maps = [{160: np.where(truth, 0.9, 0.65).astype(np.float16)}]
    settings = InferenceSettings(threshold=0.5)
    threshold, steps, score = multiscale.choose([case], maps, [160], settings)
    assert (threshold, steps, score) == (0.7, (), 1.0)
