"""The paired human-level test: model vs observer A against observer B vs A, by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bcseg.measure.observers import paired_comparison

HUMAN = [0.80] * 6


def test_as_well_as_the_other_observer():
    model = [0.80, 0.82, 0.78, 0.81, 0.79, 0.80]  # differences 0, ±0.02, ±0.01, 0: mean 0
    out = paired_comparison(model, HUMAN, names=("observer1", "observer2"), n_boot=500)
    assert out["delta"]["mean"] == pytest.approx(0.0, abs=1e-12)
    assert -0.05 < out["delta"]["ci_low"] <= 0 <= out["delta"]["ci_high"] < 0.05
    assert out["verdict"] == "as_well" and out["needed_n"] is None
    assert out["text"].startswith("agrees with observer1 as well as observer2 does (Δ Dice = +0.000 [")
    assert (out["model_mean"], out["human_mean"]) == (pytest.approx(0.8), pytest.approx(0.8))


def test_below_the_other_observer():
    model = [0.60, 0.62, 0.58, 0.61, 0.59, 0.60]  # mean difference -0.2, spread 0.02
    out = paired_comparison(model, HUMAN, names=("observer1", "observer2"), n_boot=500)
    assert out["delta"]["mean"] == pytest.approx(-0.2)
    assert out["delta"]["ci_high"] < -0.05
    assert out["verdict"] == "below" and out["text"].startswith("below: agrees with observer1 less well")


def test_too_few_specimens_says_how_many_would_do():
    # Differences +0.1, -0.1, 0: mean 0, SD 0.1. The CI half-width 1.96*0.1/sqrt(n) must
    # fall below the distance 0.05 to the margin: n = ceil((1.959964*0.1/0.05)^2) = 16.
    out = paired_comparison([0.9, 0.7, 0.8], [0.8, 0.8, 0.8], names=("observer2", "observer1"))
    assert out["delta"]["sd"] == pytest.approx(0.1)
    assert out["verdict"] == "too_few" and out["needed_n"] == 16
    assert out["text"].startswith("too few specimens to tell whether it agrees with observer2 as "
                                  "well as observer1 does (Δ Dice = +0.000, no CI: n too small, n = 3)")
    assert "about 16 specimens would be needed for the CI to exclude a margin of 0.05" in out["text"]


def test_hd95_lower_is_better_and_infinite_pairs_are_left_out():
    # HD95 in mm: model 1 mm worse on average than the other observer, margin 1 mm.
    model = [3.0, 4.0, 5.0, 6.0, 7.0, math.inf, 2.0]
    human = [2.0, 3.0, 4.0, 5.0, 6.0, 3.0, math.nan]
    out = paired_comparison(model, human, metric="hd95", unit="mm", names=("observer1", "observer2"))
    assert (out["n"], out["n_left_out"], out["delta"]["n_finite"]) == (7, 2, 5)
    assert out["delta"]["mean"] == pytest.approx(1.0) and out["delta"]["sd"] == 0.0
    # All five differences are exactly the margin: the CI [1, 1] neither clears it nor lies beyond.
    assert out["verdict"] == "too_few" and out["needed_n"] is None
    better = paired_comparison([2.5, 3.5, 4.0, 5.0, 6.0], [3.0, 3.0, 4.0, 5.0, 6.0], metric="hd95",
                               unit="mm", names=("observer1", "observer2"), n_boot=500)
    assert better["verdict"] == "as_well" and "Δ HD95 = +0.000 mm" in better["text"]


def test_unpaired_input_is_refused():
    with pytest.raises(ValueError, match="paired"):
        paired_comparison([0.8, 0.9], [0.8])
    with pytest.raises(ValueError, match="metric"):
        paired_comparison([0.8], [0.8], metric="iou")


def test_a_difference_on_the_margin_clears_it_by_no_rounding():
    # 0.80 - 0.85 is -0.04999999999999993 in floating point, and 1.4 - 0.4 is
    # 0.9999999999999999: the CI [-0.05, -0.05] (or [1, 1] mm) touches the margin and
    # clears nothing, as the exact differences of the HD95 test above.
    for model, human, metric in (([0.80] * 6, [0.85] * 6, "dice"), ([1.4] * 6, [0.4] * 6, "hd95")):
        out = paired_comparison(model, human, metric=metric, unit="mm" if metric == "hd95" else "")
        assert out["verdict"] == "too_few", out["text"]
        assert out["needed_n"] is None
        assert "no number of specimens would let the CI exclude a margin" in out["text"]


def test_specimens_left_out_are_named_in_the_verdict():
    # The model found no tumour in any of 6 specimens: every HD95 is inf and left out.
    # The verdict said "(Δ HD95 = +nan mm, no CI: n too small, n = 0)", as if 0 specimens
    # had been given, nothing of the 6 it could not score.
    out = paired_comparison([math.inf] * 6, [2.0] * 6, metric="hd95", unit="mm",
                            names=("observer1", "observer2"))
    assert out["n_left_out"] == 6 and out["verdict"] == "too_few"
    assert "nan" not in out["text"]
    assert "no Δ HD95, n = 0, 6 left out where a mask is empty" in out["text"]
    some = paired_comparison([3.0, 4.0, math.inf], [2.0, 3.0, 2.0], metric="hd95", unit="mm")
    assert "(Δ HD95 = +1.000 mm, no CI: n too small, n = 2, 1 left out where a mask is empty)" in some["text"]
