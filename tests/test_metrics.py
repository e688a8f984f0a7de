"""Metrics on hand-built masks with expectations worked out by hand, and checks
against SimpleITK's independent implementations on random blobs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from bcseg.measure import metrics as M


def rect(shape, *box):
    """A bool mask with one box set True; ``box`` is one (start, stop) per axis."""
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in box)] = True
    return m


# ---------------------------------------------------------------- overlap, by hand
def test_two_squares_2d_exact_overlap():
    # 4x4 squares overlapping in a 2x4 band: |P|=|T|=16, |P∩T|=8, |P∪T|=24.
    p = rect((10, 10), (1, 5), (1, 5))
    t = rect((10, 10), (3, 7), (1, 5))
    assert M.dice(p, t) == pytest.approx(16 / 32)
    assert M.iou(p, t) == pytest.approx(8 / 24)
    assert M.precision(p, t) == pytest.approx(8 / 16)
    assert M.recall(p, t) == pytest.approx(8 / 16)
    # background of t: 100 - 16 = 84 voxels, of which 8 are false positives.
    assert M.specificity(p, t) == pytest.approx(76 / 84)


def test_cubes_3d_exact_overlap_and_unequal_sizes():
    # p: 2x2x2 = 8 voxels inside t: 2x2x4 = 16 voxels.
    p = rect((6, 6, 6), (1, 3), (1, 3), (1, 3))
    t = rect((6, 6, 6), (1, 3), (1, 3), (1, 5))
    assert M.dice(p, t) == pytest.approx(16 / 24)
    assert M.iou(p, t) == pytest.approx(8 / 16)
    assert M.precision(p, t) == 1.0
    assert M.recall(p, t) == pytest.approx(0.5)
    assert M.specificity(p, t) == 1.0


def test_non_bool_masks_use_greater_than_zero():
    p = np.array([[0, 255], [3, 0]], np.uint8)
    t = np.array([[0.0, 1.0], [-1.0, 0.0]])
    assert M.dice(p, t) == pytest.approx(2 / 3)


# ----------------------------------------------------------- empty conventions
def test_empty_conventions():
    e = np.zeros((5, 5), bool)
    f = rect((5, 5), (1, 3), (1, 3))
    assert M.dice(e, e) == 1.0 and M.iou(e, e) == 1.0
    assert M.dice(e, f) == 0.0 and M.dice(f, e) == 0.0
    assert M.iou(e, f) == 0.0 and M.iou(f, e) == 0.0
    assert M.precision(e, e) == 1.0 and M.recall(e, e) == 1.0
    assert M.precision(e, f) == 0.0 and M.recall(f, e) == 0.0
    assert M.recall(e, f) == 0.0 and M.precision(f, e) == 0.0
    full = np.ones((5, 5), bool)
    assert M.specificity(full, full) == 1.0
    assert M.specificity(f, full) == 0.0
    assert M.specificity(e, e) == 1.0
    for fn in (M.hd95, M.assd, M.hausdorff):
        assert math.isnan(fn(e, e))
        assert fn(e, f) == math.inf and fn(f, e) == math.inf
    d_pt, d_tp = M.surface_distances(e, f)
    assert d_pt.size == 0 and d_tp.size == 4 and np.all(np.isinf(d_tp))
    assert all(a.size == 0 for a in M.surface_distances(e, e))
    assert M.volume_difference(e, e) == (0.0, 0.0)
    assert M.volume_difference(f, e) == (4.0, math.inf)


# -------------------------------------------------------------- distances, by hand
def test_shifted_rectangle_2d_anisotropic():
    # Truth: rows 2-4, cols 2-5 (3x4); pred: the same one row lower.
    # Spacing: 2.0 mm between rows, 0.5 mm between columns.
    # Each surface has 10 pixels (12 minus the 2 interior ones in the middle row).
    # pred -> truth: 6 surface pixels lie on the truth surface (0), the 2 interior
    # pixels of pred's top row are 0.5 mm (one column) from truth's side walls,
    # and pred's bottom row (4 pixels) is 2.0 mm below truth's bottom row.
    # By symmetry truth -> pred is the same multiset.
    sp = (2.0, 0.5)
    t = rect((8, 8), (2, 5), (2, 6))
    p = rect((8, 8), (3, 6), (2, 6))
    d_pt, d_tp = M.surface_distances(p, t, sp)
    expected = sorted([0.0] * 4 + [0.5] * 2 + [2.0] * 4)
    assert sorted(d_pt) == pytest.approx(expected)
    assert sorted(d_tp) == pytest.approx(expected)
    assert M.hausdorff(p, t, sp) == pytest.approx(2.0)
    assert M.hd95(p, t, sp) == pytest.approx(2.0)
    assert M.assd(p, t, sp) == pytest.approx(18 / 20)
    assert M.dice(p, t) == pytest.approx(2 / 3)
    assert M.iou(p, t) == pytest.approx(0.5)
    assert M.volume(t, sp) == pytest.approx(12 * 1.0)
    # In voxel units the bottom row is 1 away and the side step is 1 too.
    assert M.assd(p, t) == pytest.approx((2 * 1 + 4 * 1) * 2 / 20)


def test_single_voxel_shift_3d_anisotropic():
    # Two 3x3x3 cubes, one shifted by one slice along z; spacing (2, 0.5, 0.5).
    # Each surface: 26 voxels (the centre is interior). pred -> truth: 16 voxels
    # on the truth surface, pred's centre voxel of its first layer is 0.5 mm
    # from the truth ring, and pred's last layer (9 voxels) is 2 mm away.
    # hd95: 95th percentile of 26 values at rank 23.75 -> 2.0 mm.
    sp = (2.0, 0.5, 0.5)
    t = rect((6, 5, 5), (1, 4), (1, 4), (1, 4))
    p = rect((6, 5, 5), (2, 5), (1, 4), (1, 4))
    d_pt, d_tp = M.surface_distances(p, t, sp)
    expected = sorted([0.0] * 16 + [0.5] + [2.0] * 9)
    assert sorted(d_pt) == pytest.approx(expected)
    assert sorted(d_tp) == pytest.approx(expected)
    assert M.hd95(p, t, sp) == pytest.approx(2.0)
    assert M.assd(p, t, sp) == pytest.approx(2 * 18.5 / 52)
    assert M.hausdorff(p, t, sp) == pytest.approx(2.0)
    assert M.volume(p, sp) == pytest.approx(27 * 0.5)


def test_hd95_ignores_one_outlier_that_hausdorff_sees():
    # pred = truth (10x10 square) plus one far pixel, 16 columns x 0.5 mm = 8 mm
    # from the truth's right wall. pred surface: 36 + 1 pixels, distances 36 zeros
    # and 8.0; 95th percentile of that (rank 34.2) is 0. truth -> pred: all 0.
    sp = (1.0, 0.5)
    t = rect((30, 40), (5, 15), (5, 15))
    p = t.copy()
    p[9, 30] = True
    assert M.hausdorff(p, t, sp) == pytest.approx(8.0)
    assert M.hd95(p, t, sp) == 0.0
    assert M.assd(p, t, sp) == pytest.approx(8.0 / 73)


def test_mask_on_image_edge_has_surface_there():
    # A mask filling the left half touches three image edges: all its border
    # pixels are surface, so a pred shifted by one column is 1 voxel away.
    t = np.zeros((4, 6), bool)
    t[:, :3] = True
    p = np.zeros((4, 6), bool)
    p[:, 1:4] = True
    assert M.hausdorff(p, t) == pytest.approx(1.0)


# ------------------------------------------------------------- volume and tables
def test_volume_and_volume_difference():
    t = rect((4, 10, 10), (0, 2), (0, 5), (0, 5))   # 50 voxels
    p = rect((4, 10, 10), (0, 3), (0, 5), (0, 5))   # 75 voxels
    sp = (2.0, 0.5, 0.5)                            # 0.5 mm^3 per voxel
    assert M.volume(t) == 50.0
    assert M.volume(t, sp) == pytest.approx(25.0)
    abs_d, rel_d = M.volume_difference(p, t, sp)
    assert abs_d == pytest.approx(12.5) and rel_d == pytest.approx(0.5)
    abs_d, rel_d = M.volume_difference(t, p, sp)
    assert abs_d == pytest.approx(12.5) and rel_d == pytest.approx(-1 / 3)


def test_case_metrics_keys_units_and_values():
    sp = (2.0, 0.5)
    t = rect((8, 8), (2, 5), (2, 6))
    p = rect((8, 8), (3, 6), (2, 6))
    row = M.case_metrics(p, t, sp)
    assert set(row) == {
        "dice", "iou", "precision", "recall", "specificity", "hd95", "assd",
        "volume_pred", "volume_truth", "abs_volume_diff", "rel_volume_diff",
        "unit", "pred_empty", "truth_empty"}
    assert row["unit"] == "mm" and M.case_metrics(p, t)["unit"] == "voxel"
    assert row["dice"] == pytest.approx(2 / 3)
    assert row["hd95"] == pytest.approx(2.0) and row["assd"] == pytest.approx(0.9)
    assert row["volume_pred"] == pytest.approx(12.0) and row["rel_volume_diff"] == 0.0
    assert row["pred_empty"] is False and row["truth_empty"] is False
    empty = M.case_metrics(np.zeros((8, 8)), t, sp)
    assert empty["pred_empty"] is True and empty["hd95"] == math.inf


def test_slice_metrics_uses_in_plane_spacing():
    sp = (5.0, 2.0, 0.5)
    t = np.zeros((3, 8, 8), bool)
    p = np.zeros((3, 8, 8), bool)
    t[1] = rect((8, 8), (2, 5), (2, 6))
    p[1] = rect((8, 8), (3, 6), (2, 6))
    p[2, 0, 0] = True
    rows = M.slice_metrics(p, t, sp)
    assert [r["slice"] for r in rows] == [0, 1, 2]
    assert rows[0]["dice"] == 1.0 and math.isnan(rows[0]["hd95"])
    assert rows[1]["hd95"] == pytest.approx(2.0) and rows[1]["volume_truth"] == pytest.approx(12.0)
    assert rows[2]["truth_empty"] and rows[2]["hd95"] == math.inf and rows[2]["dice"] == 0.0


@pytest.mark.parametrize("call", [
    lambda: M.dice(np.zeros((4, 4)), np.zeros((4, 5))),
    lambda: M.dice(np.zeros(4), np.zeros(4)),
    lambda: M.hd95(np.ones((4, 4)), np.ones((4, 4)), (1.0,)),
    lambda: M.hd95(np.ones((4, 4)), np.ones((4, 4)), (1.0, 0.0)),
    lambda: M.volume(np.ones((2, 2)), (1.0, float("nan"))),
    lambda: M.slice_metrics(np.ones((4, 4)), np.ones((4, 4))),
    lambda: M.pixel_soft_score(np.ones((2, 2)), np.full((2, 2), 1.5)),
    lambda: M.pixel_soft_score(np.ones((2, 2)), np.ones((2, 2)), eps=0.0),
    lambda: M.summarise([[1.0, 2.0]]),
])
def test_bad_input_raises_value_error(call):
    with pytest.raises(ValueError):
        call()


# ----------------------------------------------------------- the study's score
def test_pixel_soft_score_by_hand():
    # Pixel scores with eps=1: (2+1)/(1+1+1)=1, (0+1)/(0+0+1)=1,
    # (1+1)/(1+0.5+1)=0.8, (0+1)/(0+0.5+1)=2/3. Mean = (1+1+0.8+2/3)/4.
    truth = np.array([[1, 0], [1, 0]])
    prob = np.array([[1.0, 0.0], [0.5, 0.5]])
    expected = (1 + 1 + 0.8 + 2 / 3) / 4
    assert M.pixel_soft_score(truth, prob, reduction="pixel", eps=1.0) == pytest.approx(expected)
    # A batch with a trailing channel axis gives the same per-pixel mean.
    batch = np.stack([truth, truth])[..., None]
    assert M.pixel_soft_score(batch, np.stack([prob, prob])[..., None], reduction="pixel",
                              eps=1.0) == pytest.approx(expected)


def test_pixel_soft_score_rewards_empty_prediction():
    # 64x64 image, 4x4 tumour. Empty prediction: 16 tumour pixels score
    # 1/(1+1) = 0.5, the other 4080 score 1 -> (4080 + 8)/4096, yet Dice is 0.
    truth = rect((64, 64), (10, 14), (10, 14))
    empty = np.zeros((64, 64))
    score = M.pixel_soft_score(truth, empty, reduction="pixel", eps=1.0)
    assert score == pytest.approx((4080 + 16 * 0.5) / 4096)
    assert score > 0.99
    assert M.dice(empty, truth) == 0.0


# ---------------------------------------------------------------------- summaries
def test_summarise_known_values():
    s = M.summarise([1.0, 2.0, 3.0, 4.0, math.nan, math.inf])
    assert (s["n"], s["n_finite"], s["n_inf"]) == (6, 4, 1)
    assert s["mean"] == pytest.approx(2.5)
    assert s["median"] == pytest.approx(2.5)
    assert s["sd"] == pytest.approx(math.sqrt(5 / 3))
    # Four finite values: no bootstrap CI (it would be about [min, max]).
    assert math.isnan(s["ci_low"]) and math.isnan(s["ci_high"]) and s["ci_note"] == "n too small"
    five = M.summarise([1.0, 2.0, 3.0, 4.0, 5.0, math.inf], seed=7)
    assert 1.0 <= five["ci_low"] < 3.0 < five["ci_high"] <= 5.0 and five["ci_note"] == ""
    assert five == M.summarise([1.0, 2.0, 3.0, 4.0, 5.0, math.inf], seed=7)


def test_summarise_degenerate():
    s = M.summarise([5.0] * 5, n_boot=50)
    assert s["ci_low"] == s["ci_high"] == 5.0 and s["sd"] == 0.0
    one = M.summarise([3.0])
    assert one["mean"] == 3.0 and math.isnan(one["sd"]) and math.isnan(one["ci_low"])
    assert one["ci_note"] == "n too small"
    none = M.summarise([math.nan, math.inf])
    assert none["n"] == 2 and none["n_inf"] == 1 and none["n_finite"] == 0
    assert all(math.isnan(none[k]) for k in ("mean", "sd", "median", "ci_low", "ci_high"))


def test_summarise_ci_covers_mean_of_a_large_sample():
    x = np.random.default_rng(3).normal(10.0, 2.0, 400)
    s = M.summarise(x, n_boot=500)
    # Bootstrap SE of the mean ~ 2/sqrt(400) = 0.1: the 95% CI is about +-0.2.
    assert s["ci_low"] < s["mean"] < s["ci_high"]
    assert 0.3 < s["ci_high"] - s["ci_low"] < 0.5


# ------------------------------------------------------ SimpleITK cross-checks
def blob(shape, seed, sigma=3.0):
    """A random smooth blob mask kept two voxels away from the image edge."""
    noise = np.random.default_rng(seed).normal(size=shape)
    smooth = ndimage.gaussian_filter(noise, sigma)
    inner = tuple(slice(2, n - 2) for n in shape)
    out = np.zeros(shape, bool)
    out[inner] = smooth[inner] > 0.02
    return out


def to_image(mask, spacing_mm):
    img = sitk.GetImageFromArray(mask.astype(np.uint8))
    img.SetSpacing(tuple(reversed(spacing_mm)))   # SimpleITK orders spacing x, y, z
    return img


@pytest.mark.parametrize("shape, spacing", [
    ((64, 48), (0.7, 0.3)),
    ((16, 32, 28), (2.0, 0.5, 0.4)),
])
@pytest.mark.parametrize("seed", [1, 2])
def test_against_simpleitk(shape, spacing, seed):
    p, t = blob(shape, seed), blob(shape, seed + 10)
    assert p.any() and t.any()
    ip, it = to_image(p, spacing), to_image(t, spacing)

    overlap = sitk.LabelOverlapMeasuresImageFilter()
    overlap.Execute(it, ip)
    assert M.dice(p, t) == pytest.approx(overlap.GetDiceCoefficient(), rel=1e-9)
    assert M.iou(p, t) == pytest.approx(overlap.GetJaccardCoefficient(), rel=1e-9)

    # Our surface is ITK's fully connected binary contour, so the Hausdorff
    # filter run on the two contours measures exactly our surface distances.
    cp = sitk.BinaryContour(ip, fullyConnected=True)
    ct = sitk.BinaryContour(it, fullyConnected=True)
    hd = sitk.HausdorffDistanceImageFilter()
    hd.Execute(cp, ct)
    assert M.hausdorff(p, t, spacing) == pytest.approx(hd.GetHausdorffDistance(), rel=1e-9)
    # ITK's average is the mean of the two directed means (MedPy's ASSD); ours
    # pools both sets (MONAI). Check the directed sets against ITK, then the pool.
    d_pt, d_tp = M.surface_distances(p, t, spacing)
    assert (d_pt.mean() + d_tp.mean()) / 2 == pytest.approx(hd.GetAverageHausdorffDistance(), rel=1e-9)
    assert M.assd(p, t, spacing) == pytest.approx(np.concatenate([d_pt, d_tp]).mean())
    assert d_pt.size == sitk.GetArrayFromImage(cp).sum()

    # Directed distances independently: ITK's Maurer distance map to truth's contour.
    dmap = sitk.SignedMaurerDistanceMap(ct, insideIsPositive=False, squaredDistance=False,
                                        useImageSpacing=True)
    ref = np.maximum(sitk.GetArrayFromImage(dmap), 0)[sitk.GetArrayFromImage(cp) > 0]
    assert np.sort(d_pt) == pytest.approx(np.sort(ref), rel=1e-5, abs=1e-5)  # float32 map
