"""benchmarks/member_agreement.py: the AUC it reports, checked by hand."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import member_agreement  # noqa: E402


def test_auc_counts_pairs_and_ties_half():
    # lesion values 3, 2 against normal values 1, 2: pairs 3>1, 3>2, 2>1 and one tie (2=2)
    assert member_agreement.auc([3.0, 2.0], [1.0, 2.0]) == pytest.approx(3.5 / 4)
    assert member_agreement.auc([1.0], [2.0]) == 0.0
