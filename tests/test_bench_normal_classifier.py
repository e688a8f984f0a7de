"""benchmarks/normal_classifier.py: the gate's table, checked by hand."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import normal_classifier  # noqa: E402


def test_gate_rows_drop_the_validation_share_and_score_dropped_lesions_zero():
    # 50 validation lesions 0.1, 0.118.., 0.136.., ...: the cut-offs dropping 0, 2% (one)
    # and 5% (two and a half: two) of them lie just below the 1st, 2nd and 3rd.
    val = np.linspace(0.1, 0.99, 50)
    scores = [0.05, 0.12, 0.5, 0.9, 0.01, 0.11, 0.13, 0.7]
    lesion = [True] * 4 + [False] * 4
    dice = [0.4, 0.6, 0.8, 1.0] + [np.nan] * 4
    seg_empty = [False] * 4 + [False, False, True, False]
    rows = normal_classifier.gate_rows(val, scores, lesion, dice, seg_empty)
    assert [r["validation_lesions_dropped"] for r in rows] == [0.0, 0.02, 0.05]
    assert [r["cut"] for r in rows] == pytest.approx([0.1, val[1], val[2]], abs=1e-8)
    assert [r["test_lesions_dropped"] for r in rows] == [0.25, 0.25, 0.5]  # 0.05; 0.05; 0.05 and 0.12
    assert [r["test_normals_empty"] for r in rows] == [0.25, 0.5, 0.75]
    assert all(r["segmenter_dice"] == pytest.approx(0.7) for r in rows)  # (0.4 + 0.6 + 0.8 + 1) / 4
    assert [r["gated_dice"] for r in rows] == pytest.approx([0.6, 0.6, 0.45])  # dropped lesions score 0
    assert all(r["segmenter_normals_empty"] == 0.25 for r in rows)
    # empty when either says so: the segmenter's own empty normal (0.13) counts at every cut-off
    assert [r["gated_normals_empty"] for r in rows] == [0.5, 0.75, 0.75]


def test_gate_rows_without_a_segmenter_report_the_classifier_alone():
    rows = normal_classifier.gate_rows([0.5, 0.6], [0.4, 0.7], [False, True])
    assert rows[0]["test_normals_empty"] == 1.0 and rows[0]["test_lesions_dropped"] == 0.0
    assert "gated_dice" not in rows[0]
