"""The sparse linear resize equals scikit-image's resize, and the 2D pipeline uses it."""

import itertools

import numpy as np
import pytest
from skimage.transform import resize

from bcseg.data.resize import resize_axis, resize_matrix
from bcseg.learn import pipeline


def _skimage(array, axis, length, anti_aliasing):
    shape = list(array.shape)
    shape[axis] = length
    return resize(array, tuple(shape), order=1, anti_aliasing=anti_aliasing, preserve_range=True)


@pytest.mark.parametrize("n, length, axis, anti_aliasing", [
    case for case in itertools.product([1, 2, 5, 17, 160, 333, 601], [1, 3, 160, 500], [0, 1], [False, True])])
def test_equals_skimage_resize(n, length, axis, anti_aliasing):
    rng = np.random.default_rng(n * 1000 + length)
    array = rng.random((n, 9) if axis == 0 else (9, n)).astype(np.float32)
    expected = _skimage(array, axis, length, anti_aliasing)
    got = resize_axis(array, axis, length, anti_aliasing)
    assert got.shape == expected.shape and got.dtype == expected.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6)


def test_float64_and_integer_inputs_come_back_as_float64_like_skimage():
    image = np.arange(40, dtype=np.uint8).reshape(5, 8)
    for array in (image, image.astype(np.float64)):
        got = resize_axis(array, 1, 3, True)
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, _skimage(array, 1, 3, True), atol=1e-12)


def test_interpolation_weights_by_hand():
    # 2 -> 4 pixels, centres aligned: output o samples (o + 0.5) / 2 - 0.5, i.e.
    # -0.25, 0.25, 0.75, 1.25; the ends mirror onto the inside pixel (x[-1] = x[1]).
    matrix = resize_matrix(2, 4, anti_aliasing=False).toarray()
    np.testing.assert_allclose(matrix, [[0.75, 0.25], [0.75, 0.25], [0.25, 0.75], [0.25, 0.75]])
    np.testing.assert_allclose(resize_axis(np.array([[0.0, 8.0]], np.float32), 1, 4, False),
                               [[2.0, 2.0, 6.0, 6.0]])


def test_rows_sum_to_one_so_constants_stay_constant():
    matrix = resize_matrix(600, 160, anti_aliasing=True)
    np.testing.assert_allclose(np.asarray(matrix.sum(axis=1)).ravel(), 1.0, atol=1e-12)
    flat = np.full((600, 4), 0.7, np.float32)
    np.testing.assert_allclose(resize_axis(flat, 0, 160, True), 0.7, atol=1e-6)


def test_to_square_and_from_square_match_the_skimage_path(monkeypatch):
    rng = np.random.default_rng(3)
    image = rng.random((123, 171)).astype(np.float32)
    prob = rng.random((64, 64)).astype(np.float32)
    fast = pipeline.to_square(image, 64), pipeline.from_square(prob, (123, 171))
    monkeypatch.setattr(pipeline, "resize_axis", lambda a, axis, length, aa: _skimage(a, axis, length, aa))
    slow = pipeline.to_square(image, 64), pipeline.from_square(prob, (123, 171))
    for f, s in zip(fast, slow):
        assert f.shape == s.shape
        np.testing.assert_allclose(f, s, atol=2e-6)


def test_the_speed_benchmark_times_both_paths_and_restores_the_fast_one(tmp_path):
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import resize_speed

    out = tmp_path / "speed.json"
    assert resize_speed.main(["--shape", "30", "47", "--size", "16", "--repeats", "2", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    for step in ("to_square", "from_square"):
        timing = record["steps"][step]
        assert timing["skimage_ms"] > 0 and timing["sparse_ms"] > 0
        assert timing["max_difference"] < 1e-5
    assert pipeline.resize_axis is resize_axis
