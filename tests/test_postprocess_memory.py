"""The slab-by-slab post-processing of large stacks equals the whole-volume one."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from bcseg.infer import postprocess as pp
from bcseg.infer.postprocess import (fill_holes, keep_largest_component, postprocess,
                               remove_small_components)


def _blobs(seed, shape=(40, 30, 30), sigma=2.0, level=0.55):
    noise = np.random.default_rng(seed).random(shape)
    smooth = ndi.gaussian_filter(noise, sigma)
    smooth = (smooth - smooth.min()) / (np.ptp(smooth) or 1)
    return smooth > level


def _diagonal_cases():
    cases = []
    # a thin diagonal line crossing many slab boundaries (26-connected only)
    m = np.zeros((20, 12, 12), bool)
    for z in range(12):
        m[z, z, z] = True
    for z in range(8):
        m[z + 12, 11 - z, z] = True if z else False
    cases.append(m)
    # two components of equal size: the first in scan order must win
    m = np.zeros((16, 8, 8), bool)
    m[2:6, 1:3, 1:3] = True
    m[9:13, 5:7, 5:7] = True
    cases.append(m)
    # ties where one component is joined only via a diagonal across a boundary
    m = np.zeros((16, 8, 8), bool)
    m[3, 6, 6] = True
    m[4, 7, 7] = True  # joined diagonally across z=3/4
    m[8, 0, 0] = True
    m[9, 0, 0] = True
    m[1, 0, 7] = True
    cases.append(m)
    # a hole spanning several slabs, and a cavity open to the border
    m = np.zeros((24, 14, 14), bool)
    m[2:20, 2:12, 2:12] = True
    m[4:18, 5:9, 5:9] = False           # closed cavity over several slabs
    m[6:10, 10:14, 6:8] = False         # channel to the border in y
    m[6:10, 9:11, 6:8] = False
    m[21:24, 3:8, 3:8] = True
    m[22:24, 4:7, 4:7] = False          # touches the last plane: not a hole
    cases.append(m)
    # background connected only diagonally (not a face path) to the border: a hole
    m = np.ones((12, 6, 6), bool)
    m[5, 2, 2] = False
    m[6, 3, 3] = False
    m[0, 0, 0] = False
    cases.append(m)
    cases.append(np.zeros((9, 5, 5), bool))
    cases.append(np.ones((9, 5, 5), bool))
    return cases


CASES = [_blobs(s) for s in range(5)] + [_blobs(7, level=0.45), _blobs(8, sigma=1.0, level=0.6)] \
    + _diagonal_cases()


def _whole(monkeypatch, fn, *args):
    monkeypatch.setattr(pp, "_SLAB_MIN_VOXELS", 1 << 40)
    return fn(*args)


def _slabs(monkeypatch, slab, fn, *args):
    monkeypatch.setattr(pp, "_SLAB_MIN_VOXELS", 0)
    monkeypatch.setattr(pp, "_SLAB", slab)
    return fn(*args)


@pytest.mark.parametrize("slab", [1, 4, 7])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_slab_steps_equal_whole_volume(monkeypatch, case, slab):
    mask = CASES[case]
    for fn, args in ((keep_largest_component, ()), (fill_holes, ()),
                     (remove_small_components, (1,)), (remove_small_components, (5,)),
                     (remove_small_components, (40,))):
        expected = _whole(monkeypatch, fn, mask, *args)
        for given in (mask, mask.astype(np.uint8) * 255):
            got = _slabs(monkeypatch, slab, fn, given, *args)
            assert got.dtype == bool
            np.testing.assert_array_equal(got, expected, err_msg=f"{fn.__name__}{args}")


@pytest.mark.parametrize("steps", [["largest"], ["fill"], ["small"], ["small", "largest", "fill"],
                                   ["fill", "small"], ["largest", "fill", "small"]])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_slab_postprocess_and_in_place_equal_whole_volume(monkeypatch, tmp_path, case, steps):
    mask = CASES[case]
    expected = _whole(monkeypatch, postprocess, mask, steps, 10)
    got = _slabs(monkeypatch, 4, postprocess, mask.astype(np.uint8) * 255, steps, 10)
    np.testing.assert_array_equal(got, expected)
    inplace = mask.copy()
    _slabs(monkeypatch, 7, pp.apply_steps_inplace, inplace, steps, 10)
    np.testing.assert_array_equal(inplace, expected)
    mm = np.memmap(tmp_path / "m.raw", np.uint8, "w+", shape=mask.shape)
    mm[...] = mask * np.uint8(255)
    _slabs(monkeypatch, 3, pp.apply_steps_inplace, mm, steps, 10)
    np.testing.assert_array_equal(np.asarray(mm), expected * np.uint8(255))


def test_slab_path_checks_min_size(monkeypatch):
    with pytest.raises(ValueError, match="min_size"):
        _slabs(monkeypatch, 4, remove_small_components, CASES[0], -1)
    with pytest.raises(ValueError, match="min_size"):
        _slabs(monkeypatch, 4, postprocess, CASES[0], ["small"], -1)


def test_small_masks_use_whole_volume_path():
    assert not pp._use_slabs(np.zeros((40, 30, 30), bool))
    assert not pp._use_slabs(np.zeros((4096, 4096), bool))
