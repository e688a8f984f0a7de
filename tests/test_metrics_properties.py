"""Property tests: symmetry, bounds and translation invariance of the metrics."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from bcseg.measure import metrics as M

FEW = settings(max_examples=50, deadline=None)

shapes = st.one_of(
    st.tuples(st.integers(2, 8), st.integers(2, 8)),
    st.tuples(st.integers(1, 4), st.integers(2, 6), st.integers(2, 6)),
)


@st.composite
def mask_pairs(draw):
    """Two bool masks of one small 2D or 3D shape, and a spacing for it."""
    shape = draw(shapes)
    p = draw(arrays(bool, shape))
    t = draw(arrays(bool, shape))
    spacing = tuple(draw(st.sampled_from([0.25, 0.5, 1.0, 1.5, 3.0])) for _ in shape)
    return p, t, spacing


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


@FEW
@given(mask_pairs())
def test_symmetry(pair):
    p, t, sp = pair
    assert M.dice(p, t) == M.dice(t, p)
    assert M.iou(p, t) == M.iou(t, p)
    assert M.precision(p, t) == M.recall(t, p)
    for fn in (M.hd95, M.assd, M.hausdorff):
        assert same(fn(p, t, sp), fn(t, p, sp))


@FEW
@given(mask_pairs())
def test_bounds_and_relations(pair):
    p, t, sp = pair
    d, j = M.dice(p, t), M.iou(p, t)
    assert 0.0 <= j <= d <= 1.0
    assert math.isclose(d, 2 * j / (1 + j), rel_tol=1e-12)
    for fn in (M.precision, M.recall, M.specificity):
        assert 0.0 <= fn(p, t) <= 1.0
    assert M.dice(p, p) == 1.0
    h95, mean, h = M.hd95(p, t, sp), M.assd(p, t, sp), M.hausdorff(p, t, sp)
    if p.any() and t.any():
        assert 0.0 <= mean <= h and 0.0 <= h95 <= h < math.inf
    elif p.any() or t.any():
        assert h95 == mean == h == math.inf
    else:
        assert math.isnan(h95) and math.isnan(mean) and math.isnan(h)
    if p.any():
        assert M.hd95(p, p, sp) == 0.0


@FEW
@given(mask_pairs(), st.data())
def test_translation_invariance(pair, data):
    p, t, sp = pair
    pad = 3
    shift = tuple(data.draw(st.integers(-pad, pad)) for _ in p.shape)

    def move(m):
        return np.roll(np.pad(m, pad), shift, axis=tuple(range(m.ndim)))

    q, u = move(p), move(t)
    assert M.dice(q, u) == M.dice(p, t)
    assert M.iou(q, u) == M.iou(p, t)
    for fn in (M.hd95, M.assd, M.hausdorff):
        assert same(fn(q, u, sp), fn(p, t, sp))
    assert M.volume(q, sp) == M.volume(p, sp)
