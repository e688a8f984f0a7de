"""benchmarks/shift.py: the field-of-view shifts move the truth with the image, checked by hand."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import shift  # noqa: E402


def _lesion():
    image = np.full((40, 60), 80, np.uint8)
    truth = np.zeros((40, 60), bool)
    truth[16:24, 26:34] = True  # an 8 x 8 lesion at the centre
    image[truth] = 20
    return image, truth


def test_zoom_in_keeps_the_central_fraction_of_image_and_truth_alike():
    image, truth = _lesion()
    cropped, cropped_truth = shift.zoom_in(image, truth, 0.5)
    # the central half: rows 10-29 of 40, columns 15-44 of 60
    assert cropped.shape == cropped_truth.shape == (20, 30)
    np.testing.assert_array_equal(cropped, image[10:30, 15:45])
    assert cropped_truth.sum() == 64 and cropped_truth[6:14, 11:19].all()
    assert (cropped[cropped_truth] == 20).all()  # the truth still lies on the lesion


def test_zoom_out_shrinks_image_and_truth_to_the_top_centre_of_a_dark_frame():
    image, truth = _lesion()
    framed, framed_truth = shift.zoom_out(image, truth, 0.5)
    assert framed.shape == image.shape and framed_truth.shape == truth.shape
    # the image, 20 x 30, at rows 0-19 and columns 15-44; black around it
    assert (framed[20:] == 0).all() and (framed[:, :15] == 0).all() and (framed[:, 45:] == 0).all()
    assert (framed[2:18, 17:43] > 0).all()
    # the lesion, 8 x 8 at rows 16-23 and columns 26-33, halves to 4 x 4 at rows 8-11,
    # columns 13-16 of the small image: columns 28-31 of the frame
    assert framed_truth.sum() == 16 and framed_truth[8:12, 28:32].all()
    assert (framed[framed_truth] < 50).all()


def test_every_shift_keeps_an_images_type_and_the_truths_shape():
    image, truth = _lesion()
    for name, (function, values) in shift.SHIFTS.items():
        for value in values:
            if name in shift.GEOMETRIC:
                out, out_truth = function(image, truth, value)
                assert out.shape == out_truth.shape and out_truth.dtype == bool, name
            else:
                out = function(image, value)
                assert out.shape == image.shape, name
            assert out.dtype == np.uint8, name


def test_validation_of_a_run_scores_the_lesion_images_its_fold_json_lists(busi_root):
    """--validation-of RUN: the images come from the run's list, whichever fold they are in,
    and a normal image on the list is left out as the fold's normals are."""
    images = shift.load_fold(busi_root, 0, None, ids=["benign (1)", "malignant (2)", "normal (3)"])
    assert sorted(i[0] for i in images) == ["benign (1)", "malignant (2)"]
    assert all(truth.any() and image.shape == truth.shape for _, _, image, truth in images)
