"""Property tests: TIFF writing and reading round-trip shape, dtype, values and spacing.

``io.write_image`` / ``write_mask`` / ``write_probability`` write ImageJ TIFF; reading
the file back with ``io.read_image`` / ``read_mask`` must give the same array and the
same spacing. In-plane spacing is stored as a TIFF resolution (a rational number of
pixels per mm) and z spacing as text in the ImageJ description, so spacing is compared
with a relative tolerance of 1e-6: looser than float64 round-off, tighter than what
a float32 (about 6e-8 relative) or a rounded decimal would need to get wrong.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bcseg.data import io
from bcseg.errors import DataError, UsageError

SPACING_RTOL = 1e-6
SETTINGS = settings(max_examples=30, deadline=None)

# Sizes of at least 2: read_image refuses 1-pixel edges, and drops axes of size 1
# (a 1-slice stack reads back as a 2D image).
shapes_2d = st.tuples(st.integers(2, 12), st.integers(2, 12))
shapes_3d = st.tuples(st.integers(2, 5), st.integers(2, 12), st.integers(2, 12))
shapes = st.one_of(shapes_2d, shapes_3d)
dtypes = st.sampled_from([np.uint8, np.uint16, np.int16, np.float32])
# From 1 µm to 10 cm per voxel: every spacing a microscope or an ultrasound scanner uses.
spacing_values = st.floats(min_value=1e-3, max_value=100.0, allow_nan=False, allow_infinity=False)


def _elements(dtype):
    if np.dtype(dtype).kind == "f":
        return st.floats(width=32, allow_nan=False, allow_infinity=False)
    info = np.iinfo(dtype)
    return st.integers(int(info.min), int(info.max))


@st.composite
def images(draw):
    """(array, spacing or None) of a random shape and dtype."""
    shape = draw(shapes)
    dtype = draw(dtypes)
    array = draw(arrays(dtype, shape, elements=_elements(dtype)))
    spacing = draw(st.none() | st.tuples(*[spacing_values] * len(shape)))
    return array, spacing


def _roundtrip(write, data, spacing, name="x.tif", read=io.read_image):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        assert write(path, data, spacing_mm=spacing, force=False) == path
        assert [p.name for p in Path(folder).iterdir()] == [name]  # no temporary file left
        return read(path)


def _assert_spacing(read, written):
    if written is None:
        assert read is None
    else:
        assert read is not None and len(read) == len(written)
        np.testing.assert_allclose(read, written, rtol=SPACING_RTOL)


@SETTINGS
@given(images())
def test_write_image_then_read_image_gives_it_back(image):
    array, spacing = image
    back, back_spacing = _roundtrip(io.write_image, array, spacing)
    assert back.shape == array.shape and back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)
    _assert_spacing(back_spacing, spacing)


@SETTINGS
@given(images())
def test_memory_mapped_read_gives_the_same_array(image):
    array, spacing = image
    with tempfile.TemporaryDirectory() as folder:
        path = io.write_image(Path(folder) / "x.tif", array, spacing)
        mapped, mapped_spacing = io.open_volume(path)
        assert mapped.shape == array.shape and mapped.dtype == array.dtype
        np.testing.assert_array_equal(mapped, array)
        _assert_spacing(mapped_spacing, spacing)
        del mapped  # release the file before the folder goes


@SETTINGS
@given(st.data())
def test_write_mask_then_read_mask_gives_it_back(data):
    shape = data.draw(shapes)
    mask = data.draw(arrays(np.bool_, shape))
    spacing = data.draw(st.none() | st.tuples(*[spacing_values] * len(shape)))
    back = _roundtrip(io.write_mask, mask, spacing, read=lambda p: io.read_mask(p, shape))
    assert back.dtype == np.bool_ and back.shape == shape
    np.testing.assert_array_equal(back, mask)
    stored, stored_spacing = _roundtrip(io.write_mask, mask, spacing)
    assert stored.dtype == np.uint8 and set(np.unique(stored)) <= {0, 255}  # as Fiji draws
    _assert_spacing(stored_spacing, spacing)


@SETTINGS
@given(st.data())
def test_write_probability_then_read_image_gives_float32_back(data):
    shape = data.draw(shapes)
    prob = data.draw(arrays(np.float32, shape, elements=st.floats(0, 1, width=32)))
    spacing = data.draw(st.none() | st.tuples(*[spacing_values] * len(shape)))
    back, back_spacing = _roundtrip(io.write_probability, prob, spacing)
    assert back.dtype == np.float32 and back.shape == shape
    np.testing.assert_array_equal(back, prob)
    _assert_spacing(back_spacing, spacing)


@SETTINGS
@given(st.data())
def test_any_single_positive_label_reads_as_the_same_mask(data):
    shape = data.draw(shapes)
    dtype = data.draw(st.sampled_from([np.uint8, np.uint16]))
    label = data.draw(st.integers(1, int(np.iinfo(dtype).max)))
    mask = data.draw(arrays(np.bool_, shape))
    back = _roundtrip(io.write_image, mask.astype(dtype) * dtype(label), None,
                      read=lambda p: io.read_mask(p, shape))
    np.testing.assert_array_equal(back, mask)


@SETTINGS
@given(st.data())
def test_two_positive_labels_are_refused(data):
    shape = data.draw(shapes)
    labels = data.draw(st.lists(st.integers(1, 255), min_size=2, max_size=2, unique=True))
    array = np.zeros(shape, np.uint8)
    array.flat[0], array.flat[-1] = labels
    with pytest.raises(DataError, match="not binary"):
        _roundtrip(io.write_image, array, None, read=io.read_mask)


@SETTINGS
@given(images())
def test_an_existing_file_is_never_overwritten_without_force(image):
    array, spacing = image
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.tif"
        path.write_bytes(b"an earlier result")
        with pytest.raises(UsageError, match="already exists"):
            io.write_image(path, array, spacing, force=False)
        assert path.read_bytes() == b"an earlier result"
        assert [p.name for p in Path(folder).iterdir()] == ["x.tif"]
