"""Consensus masks and inter-observer agreement on hand-built masks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bcseg.data import consensus as consensus_module
from bcseg.measure import observers as O


def rect(shape, *box):
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in box)] = True
    return m


A = rect((10, 10), (2, 6), (2, 6))   # 4x4 square
B = rect((10, 10), (4, 8), (2, 6))   # the same two rows lower: overlaps A in 2x4


def test_union_and_intersection_by_hand():
    u, i = O.union([A, B]), O.intersection([A, B])
    assert u.dtype == bool and i.dtype == bool
    assert u.sum() == 24 and i.sum() == 8
    assert np.array_equal(i, rect((10, 10), (4, 6), (2, 6)))
    assert np.array_equal(u, rect((10, 10), (2, 8), (2, 6)))
    # uint8 0/255 masks, as read from Fiji TIFFs, mean the same.
    assert np.array_equal(O.union([A.astype(np.uint8) * 255, B]), u)
    assert np.array_equal(O.union([A]), A)


def test_union_rejects_bad_input():
    with pytest.raises(ValueError):
        O.union([])
    with pytest.raises(ValueError, match="shape"):
        O.intersection([A, np.zeros((10, 11))])


@pytest.mark.parametrize("mask", [A, rect((4, 10, 10), (1, 3), (2, 6), (2, 6))])
def test_staple_of_identical_masks_is_that_mask(mask):
    out = O.staple([mask, mask])
    assert out.dtype == bool and np.array_equal(out, mask)


def test_staple_follows_majority_of_three():
    # Two observers draw A, the third draws B: STAPLE rates the third one less
    # reliable, and keeps exactly A.
    assert np.array_equal(O.staple([A, A, B]), A)
    assert np.array_equal(O.staple([A, B, A]), A)


def test_staple_3d_and_empty_inputs():
    a3 = rect((5, 12, 12), (1, 4), (2, 8), (2, 8))
    b3 = rect((5, 12, 12), (1, 4), (3, 9), (2, 8))
    out = O.staple([a3, a3, b3])
    assert out.shape == a3.shape and np.array_equal(out, a3)
    empty = O.staple([np.zeros((6, 6)), np.zeros((6, 6))])
    assert empty.dtype == bool and not empty.any()


def test_consensus_methods_and_errors():
    masks = {"obs1": A, "obs2": B}
    assert np.array_equal(O.consensus(masks, "obs2"), B)
    assert np.array_equal(O.consensus(masks, "union"), O.union([A, B]))
    assert np.array_equal(O.consensus(masks, "intersection"), O.intersection([A, B]))
    assert O.consensus(masks, "staple").shape == A.shape
    with pytest.raises(ValueError, match="'obs1', 'obs2', 'union', 'intersection', 'staple'"):
        O.consensus(masks, "majority")
    with pytest.raises(ValueError):
        O.consensus({}, "union")
    with pytest.raises(ValueError, match="name of a consensus method"):
        O.consensus({"union": A, "obs2": B}, "union")


def test_agreement_known_pair():
    # A and B: |A|=|B|=16, overlap 8 -> dice 0.5, iou 1/3. Spacing (2, 0.5):
    # B's bottom row is 2 rows = 4 mm below A's, so the Hausdorff (and hd95) is 4 mm.
    rows = O.agreement({"obs1": A, "obs2": B}, spacing_mm=(2.0, 0.5))
    assert len(rows) == 1
    r = rows[0]
    assert (r["observer_a"], r["observer_b"]) == ("obs1", "obs2")
    assert r["dice"] == pytest.approx(0.5)
    assert r["iou"] == pytest.approx(1 / 3)
    assert r["hd95"] == pytest.approx(4.0)
    assert r["volume_pred"] == r["volume_truth"] == pytest.approx(16.0)
    assert r["unit"] == "mm"


def test_agreement_pairs_and_single_observer():
    rows = O.agreement({"a": A, "b": B, "c": A})
    assert [(r["observer_a"], r["observer_b"]) for r in rows] == [("a", "b"), ("a", "c"), ("b", "c")]
    assert rows[1]["dice"] == 1.0 and rows[1]["hd95"] == 0.0
    assert O.agreement({"a": A}) == []
    empty = O.agreement({"a": A, "b": np.zeros_like(A)})[0]
    assert empty["dice"] == 0.0 and empty["hd95"] == math.inf


# ------------------------------------------------------------- STAPLE, two observers
def _nested(n):
    inner = rect((n, n), (n // 4, n // 2), (n // 4, n // 2))
    outer = rect((n, n), (n // 4 - 1, n // 2 + 2), (n // 4 - 1, n // 2 + 3))
    return inner, outer


@pytest.mark.parametrize("n", [8, 16, 33, 64, 128])
def test_staple_of_two_nested_observers_is_their_intersection_at_every_size(n, monkeypatch):
    # SimpleITK gives the ring between the masks 0.5 at n = 8, 16 and 0.5 + 1 ulp from
    # n = 33 on, so 'prob > 0.5' flipped from intersection to union with the field size.
    monkeypatch.setattr(consensus_module, "_warned_two_observers", False)
    inner, outer = _nested(n)
    with pytest.warns(UserWarning, match="two observers is degenerate.*intersection"):
        out = O.staple([inner, outer])
    assert np.array_equal(out, inner) and np.array_equal(O.staple([outer, inner]), inner)
    assert np.array_equal(O.staple([inner, outer], threshold=0.25), outer)
    assert np.array_equal(O.consensus({"a": inner, "b": outer}, "staple"), O.intersection([inner, outer]))


def test_two_observer_staple_warns_once(monkeypatch):
    import warnings

    monkeypatch.setattr(consensus_module, "_warned_two_observers", False)
    inner, outer = _nested(16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            O.staple([inner, outer])
    assert len([w for w in caught if "degenerate" in str(w.message)]) == 1


def test_staple_keeps_what_every_observer_marked_and_nothing_none_did():
    # On small or barely overlapping masks STAPLE's estimates can rate an observer worse
    # than chance, which inverts that observer's votes: it marked a pixel that no observer
    # drew (index 5 below), and in the second case dropped the one pixel all four drew
    # (index 13). A consensus lies between the observers' intersection and their union.
    three = [np.array(v, bool).reshape(4, 2) for v in
             ([0, 1, 1, 0, 0, 0, 0, 1], [0] * 8, [1, 1, 0, 1, 1, 0, 1, 1])]
    out = O.staple(three)
    assert not out[2, 1]  # index 5: no observer drew it
    four = [np.array(v, bool).reshape(4, 4) for v in
            ([1, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 1, 1, 1, 0, 0],
             [0, 0, 1, 1, 1, 0, 1, 0, 1, 1, 0, 1, 0, 1, 1, 1],
             [1, 1, 0, 1, 0, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1],
             [0, 1, 1, 1, 1, 0, 1, 0, 0, 1, 1, 0, 1, 1, 1, 1])]
    out = O.staple(four)
    assert out[3, 1]  # index 13: all four drew it
    for masks in (three, four):
        out = O.staple(masks)
        assert not (out & ~O.union(masks)).any() and not (O.intersection(masks) & ~out).any()
