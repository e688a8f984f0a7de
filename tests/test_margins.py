"""Margins on exact geometry: a voxelised sphere (the tumour) inside a box (the
specimen) with anisotropic voxels, where every face distance is known by hand."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from scipy import ndimage

from bcseg.atomic import PARTIAL_MARK
from bcseg.data import io
from bcseg.measure import margins as M
from bcseg.errors import DataError, UsageError

SPACING = (0.5, 0.2, 0.3)  # mm per (z, y, x) voxel
TOL = max(SPACING)         # one voxel, in mm


def box_and_sphere(shape, box, centre_mm, radius_mm, spacing=SPACING):
    """Specimen = voxels ``box[a][0] <= i <= box[a][1]``; tumour = voxel centres
    within ``radius_mm`` of ``centre_mm`` (voxel centre i sits at i * spacing)."""
    specimen = np.zeros(shape, bool)
    specimen[tuple(slice(lo, hi + 1) for lo, hi in box)] = True
    grid = np.indices(shape).astype(float)
    r2 = sum(((grid[a] * spacing[a]) - centre_mm[a]) ** 2 for a in range(3))
    return r2 <= radius_mm ** 2 + 1e-9, specimen


def analytic_faces(box, centre_mm, radius_mm, spacing=SPACING, orientation=M.DEFAULT_ORIENTATION):
    """Gap between the sphere and the plane of each face's outermost voxel centres."""
    out = {}
    for axis, (lo, hi) in enumerate(box):
        out[orientation.face(axis, -1)] = centre_mm[axis] - radius_mm - lo * spacing[axis]
        out[orientation.face(axis, 1)] = hi * spacing[axis] - centre_mm[axis] - radius_mm
    return out


SHAPE = (48, 110, 76)
BOX = ((3, 43), (4, 104), (3, 71))  # 20 x 20 x 20.4 mm between surface voxel centres


# ------------------------------------------------------------------ exact geometry
def test_face_distances_match_analytic_sphere_off_grid():
    centre, radius = (9.3, 8.13, 11.07), 3.4  # off the voxel grid, radius off the grid too
    tumour, specimen = box_and_sphere(SHAPE, BOX, centre, radius)
    result = M.margins(tumour, specimen, SPACING)
    expected = analytic_faces(BOX, centre, radius)
    for face, value in expected.items():
        assert result["faces"][face]["distance_mm"] == pytest.approx(value, abs=TOL), face
    nearest = min(expected, key=expected.get)
    assert result["closest_face"] == nearest == "anterior"
    assert result["distance_mm"] == pytest.approx(expected[nearest], abs=TOL)
    assert result["distance_mm"] == min(f["distance_mm"] for f in result["faces"].values())
    voxel = np.prod(SPACING)
    assert result["tumour_volume_mm3"] == pytest.approx(tumour.sum() * voxel)
    assert result["tumour_volume_mm3"] == pytest.approx(4 / 3 * math.pi * radius ** 3, rel=0.03)
    assert result["specimen_volume_mm3"] == pytest.approx(41 * 101 * 69 * voxel)
    assert result["warnings"] == []


def test_closest_points_exact_when_sphere_is_on_grid():
    # Centre on a voxel centre and radius a whole number of voxels on every axis:
    # the extreme voxel towards each face is unique, so the closest pair is known.
    centre_idx = np.array([20, 30, 40])
    centre = tuple(centre_idx * SPACING)  # (10, 6, 12) mm
    tumour, specimen = box_and_sphere(SHAPE, BOX, centre, 3.0)
    result = M.margins(tumour, specimen, SPACING)
    expected = analytic_faces(BOX, centre, 3.0)
    for face, value in expected.items():
        assert result["faces"][face]["distance_mm"] == pytest.approx(value, abs=1e-9), face
    # anterior (y low) is 6 - 3 - 0.8 = 2.2 mm away; the next is superior, 10 - 3 - 1.5 = 5.5
    assert result["closest_face"] == "anterior"
    assert result["distance_mm"] == pytest.approx(2.2)
    assert result["tumour_index"] == (20, 30 - 15, 40)  # 3 mm = 15 rows of 0.2 mm
    assert result["surface_index"] == (20, BOX[1][0], 40)
    assert result["tumour_mm"] == pytest.approx((10.0, 3.0, 12.0))
    assert result["surface_mm"] == pytest.approx((10.0, 0.8, 12.0))
    lateral = result["faces"]["lateral"]
    assert lateral["tumour_index"] == (20, 30, 50) and lateral["surface_index"] == (20, 30, BOX[2][1])
    assert not result["ink_on_tumour"] and not result["close_margin"]


def test_distance_equals_edt_to_surface_on_irregular_shapes():
    # An ellipsoid specimen and an off-centre blob: the k-d tree result must equal the
    # distance transform of the non-surface voxels, minimised over the tumour.
    grid = np.indices((30, 60, 50)).astype(float)
    sp = np.array(SPACING)[:, None, None, None]
    pos = grid * sp
    specimen = (((pos[0] - 7.5) / 6.5) ** 2 + ((pos[1] - 6) / 5.5) ** 2 + ((pos[2] - 7.5) / 6.8) ** 2) <= 1
    tumour = (((pos[0] - 9) / 2) ** 2 + ((pos[1] - 8.5) / 1.5) ** 2 + ((pos[2] - 6) / 2.5) ** 2) <= 1
    tumour &= ~(((pos[0] - 9) ** 2 + (pos[1] - 8.5) ** 2) < 0.6)  # a notch, so not convex
    surface = specimen & ~ndimage.binary_erosion(specimen, np.ones((3, 3, 3)), border_value=0)
    edt = ndimage.distance_transform_edt(~surface, sampling=SPACING)
    result = M.margins(tumour, specimen, SPACING)
    assert result["distance_mm"] == pytest.approx(edt[tumour].min(), abs=1e-9)
    assert result["closest_face"] == "posterior"  # the blob sits deep (high y)
    t, s = np.array(result["tumour_index"]), np.array(result["surface_index"])
    assert tumour[tuple(t)] and surface[tuple(s)]
    assert np.linalg.norm((t - s) * SPACING) == pytest.approx(result["distance_mm"])


# ---------------------------------------------------------------------------- flags
@pytest.mark.parametrize("gap_rows, ink, close", [(0, True, True), (5, False, True), (25, False, False)])
def test_flags_touching_close_and_clear(gap_rows, ink, close):
    # Sphere of 2 mm (10 rows) whose top voxel is gap_rows * 0.2 mm below the
    # anterior surface row; every other face is at least 6 mm away.
    box = ((2, 41), (2, 97), (2, 65))
    top = box[1][0] + gap_rows
    centre = (10.5, (top + 10) * 0.2, 10.2)
    tumour, specimen = box_and_sphere((44, 100, 68), box, centre, 2.0)
    result = M.margins(tumour, specimen, SPACING, close_mm=2.0)
    face = result["faces"]["anterior"]
    assert face["distance_mm"] == pytest.approx(gap_rows * 0.2, abs=1e-9)
    assert (face["ink_on_tumour"], face["close_margin"]) == (ink, close)
    assert result["closest_face"] == "anterior"
    assert (result["ink_on_tumour"], result["close_margin"]) == (ink, close)
    others = [f for f in M.FACES if f != "anterior"]
    assert all(result["faces"][f]["distance_mm"] > 6 for f in others)
    assert not any(result["faces"][f]["ink_on_tumour"] or result["faces"][f]["close_margin"] for f in others)


# ---------------------------------------------------------------------- orientation
def test_orientation_string_permutes_face_names():
    centre, radius = (9.3, 8.13, 11.07), 3.4
    tumour, specimen = box_and_sphere(SHAPE, BOX, centre, radius)
    default = M.margins(tumour, specimen, SPACING)
    text = "z:Medial-Lateral, y:deep-superficial, x:superior-inferior"
    other = M.margins(tumour, specimen, SPACING, orientation=text)
    rename = {"superior": "medial", "inferior": "lateral", "anterior": "posterior",
              "posterior": "anterior", "medial": "superior", "lateral": "inferior"}
    for face, new in rename.items():
        assert other["faces"][new]["distance_mm"] == default["faces"][face]["distance_mm"]
    assert other["closest_face"] == rename[default["closest_face"]] == "posterior"
    assert other["orientation"] == "z:medial-lateral,y:posterior-anterior,x:superior-inferior"
    assert M.parse_orientation(other["orientation"]) == M.parse_orientation(text)
    assert str(M.DEFAULT_ORIENTATION) == "z:superior-inferior,y:anterior-posterior,x:medial-lateral"
    assert M.DEFAULT_ORIENTATION.direction("deep") == (1, 1)


@pytest.mark.parametrize("text, words", [
    ("", "3 items"),
    ("z:superior-inferior,y:anterior-posterior", "3 items"),
    ("z:superior-inferior,z:anterior-posterior,x:medial-lateral", "axis z given twice"),
    ("z:superior-inferior,y:superior-inferior,x:medial-lateral", "exactly one axis"),
    ("z:superior-anterior,y:inferior-posterior,x:medial-lateral", "not opposite"),
    ("z:top-bottom,y:anterior-posterior,x:medial-lateral", "unknown face"),
    ("w:superior-inferior,y:anterior-posterior,x:medial-lateral", "cannot read"),
    ("z superior-inferior,y:anterior-posterior,x:medial-lateral", "cannot read"),
    ("z:superior,y:anterior-posterior,x:medial-lateral", "cannot read"),
    # an empty item was dropped without a word, so a list with a slip in it was read
    ("z:superior-inferior,y:anterior-posterior,x:medial-lateral,", "empty item"),
    ("z:superior-inferior,,y:anterior-posterior,x:medial-lateral", "empty item"),
])
def test_bad_orientation_strings_raise(text, words):
    with pytest.raises(ValueError, match=words):
        M.parse_orientation(text)


# ------------------------------------------------------------------- specimen mask
def test_specimen_mask_recovers_speckled_box_with_dark_tumour():
    rng = np.random.default_rng(1)
    shape, box = (36, 80, 60), ((6, 30), (15, 70), (10, 50))
    truth = np.zeros(shape, bool)
    truth[tuple(slice(lo, hi) for lo, hi in box)] = True
    grid = np.indices(shape).astype(float) * np.array(SPACING)[:, None, None, None]
    tumour = ((grid[0] - 9) ** 2 + (grid[1] - 8) ** 2 + (grid[2] - 9) ** 2) <= 2.5 ** 2
    assert truth[tumour].all()
    volume = rng.rayleigh(8, shape)                         # coupling medium
    volume[truth] = rng.rayleigh(80, int(truth.sum()))      # tissue speckle
    volume[tumour] = rng.rayleigh(12, int(tumour.sum()))    # hypoechoic tumour
    mask = M.specimen_mask(volume.astype(np.float32), SPACING)
    dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
    assert dice > 0.95
    assert mask[tumour].mean() > 0.99
    assert not M.specimen_mask(np.full((8, 8, 8), 3.0), SPACING).any()


def test_specimen_mask_near_the_image_edge_is_not_glued_to_it():
    """Tissue 0.8 mm from the top and bottom of the image, less than the 1 mm closing:
    the closing's dilation reached the edge and its erosion could not come back from
    there, so the mask filled those rows (a 12% larger specimen, a false warning that
    it runs off the image, wrong anterior and posterior margins). Tissue that does run
    off the image still reaches the edge."""
    shape = (20, 40, 40)
    for rows, x_cols in (((4, 36), (6, 36)), ((0, 40), (6, 36))):
        volume = np.zeros(shape, np.float32)
        volume[3:17, rows[0]:rows[1], x_cols[0]:x_cols[1]] = 100
        mask = M.specimen_mask(volume, SPACING, sigma_mm=0, opening_mm=0)
        hit = np.flatnonzero(mask.any(axis=(0, 2)))
        assert (hit[0], hit[-1] + 1) == rows
        assert mask.sum() == 14 * (rows[1] - rows[0]) * 30



def test_specimen_mask_of_float32_values_spanning_float32s_range():
    """float32 pixels from -3e38 to 3e38 (predict segments them, normalised in float64)
    crashed margins with numpy's 'Too many bins for data range' (exit 1): the Otsu
    histogram's range, 6e38, is beyond float32. The mask is the scaled-down image's."""
    volume = np.full((8, 24, 24), -1.0, np.float32)
    volume[2:6, 4:20, 4:20] = 1.0
    small = M.specimen_mask(volume, SPACING)
    assert small.any()
    assert np.array_equal(M.specimen_mask(volume * np.float32(3e38), SPACING), small)


# ------------------------------------------------------------ warnings and errors
def test_empty_tumour_gives_row_with_warning():
    _, specimen = box_and_sphere((20, 20, 20), ((2, 17),) * 3, (5, 2, 3), 1.0)
    result = M.margins(np.zeros_like(specimen), specimen, SPACING)
    assert result["warnings"] == ["no tumour found"]
    assert math.isnan(result["distance_mm"]) and result["closest_face"] == ""
    assert all(math.isnan(f["distance_mm"]) for f in result["faces"].values())
    assert result["tumour_volume_mm3"] == 0
    row = M.margins_row(result)
    assert row["warnings"] == "no tumour found" and row["tumour_z"] == ""


def test_tumour_outside_specimen_warns():
    shape, box = (20, 40, 30), ((2, 17), (2, 37), (2, 27))
    _, specimen = box_and_sphere(shape, box, (0, 0, 0), 0.1)
    far = np.zeros(shape, bool)
    far[0, 0, 0:2] = True  # outside the box entirely
    result = M.margins(far, specimen, SPACING)
    assert any("wholly outside" in w for w in result["warnings"])
    assert math.isnan(result["distance_mm"])
    partly = np.zeros(shape, bool)
    partly[8:12, 0:6, 10:14] = True  # rows 0-1 outside, rows 2-5 inside
    result = M.margins(partly, specimen, SPACING)
    assert any("32 of 96 tumour voxels" in w for w in result["warnings"])
    assert result["distance_mm"] == 0 and result["ink_on_tumour"]
    assert result["closest_face"] == "anterior"


def test_a_margin_not_measured_is_flagged_neither_clear_nor_inked(tmp_path):
    """A tumour wholly outside the specimen, or a specimen mask that is empty: no margin
    was measured, yet the row said ink_on_tumour False and close_margin False (a clear
    margin, overall and on every face); a filter on the flags passed the case as clear.
    Unknown flags are blank. No tumour found: nothing on the ink, the flags say False."""
    shape, box = (20, 40, 30), ((2, 17), (2, 37), (2, 27))
    _, specimen = box_and_sphere(shape, box, (0, 0, 0), 0.1)
    far = np.zeros(shape, bool)
    far[0, 0, 0:2] = True
    for tumour, tissue in ((far, specimen), (far, np.zeros_like(specimen))):
        result = M.margins(tumour, tissue, SPACING)
        assert result["ink_on_tumour"] is None and result["close_margin"] is None
        assert all(f["ink_on_tumour"] is None and f["close_margin"] is None
                   for f in result["faces"].values())
        result["case"] = "far"
        M.write_margins_csv([result], tmp_path / "far.csv")
        with open(tmp_path / "far.csv", newline="", encoding="utf-8") as handle:
            (row,) = list(csv.DictReader(handle))
        assert row["ink_on_tumour"] == row["close_margin"] == row["anterior_ink"] == ""
    result = M.margins(np.zeros_like(specimen), specimen, SPACING)
    assert result["ink_on_tumour"] is False and result["close_margin"] is False
    assert M.margins_row(result)["posterior_close"] is False


def test_empty_specimen_and_edge_of_image_warn():
    tumour = np.zeros((10, 10, 10), bool)
    tumour[4:6, 4:6, 4:6] = True
    result = M.margins(tumour, np.zeros_like(tumour), SPACING)
    assert result["warnings"] == ["specimen mask is empty; no margins"]
    assert math.isnan(result["distance_mm"])
    specimen = np.zeros_like(tumour)
    specimen[2:8, 2:, 2:8] = True  # runs off the deep end of the image
    result = M.margins(tumour, specimen, SPACING)
    assert any("posterior side" in w and "field of view" in w for w in result["warnings"])


def test_missing_spacing_and_bad_input_raise():
    tumour = np.zeros((6, 6, 6), bool)
    with pytest.raises(DataError, match="spacing unknown.*spacing_mm"):
        M.margins(tumour, tumour, None)
    with pytest.raises(DataError, match="must be positive, finite"):
        M.margins(tumour, tumour, (0.5, 0, 0.3))
    with pytest.raises(DataError, match="one shape"):
        M.margins(tumour, tumour[:, :, :5], SPACING)


# --------------------------------------------------------------------------- files
def speckled_specimen(seed: int = 2):
    """A box of bright speckle in dark medium with a dark sphere 0.8 mm below its anterior face."""
    rng = np.random.default_rng(seed)
    shape, box = (24, 60, 40), ((4, 19), (8, 51), (6, 33))
    tumour, specimen = box_and_sphere(shape, box, (6.0, 4.0, 6.0), 1.6)
    volume = rng.rayleigh(8, shape)
    volume[specimen] = rng.rayleigh(80, int(specimen.sum()))
    volume[tumour] = rng.rayleigh(12, int(tumour.sum()))
    return tumour, specimen, np.clip(volume, 0, 255).astype(np.uint8)


def test_margins_for_files_writes_outputs_and_refuses_to_overwrite(tmp_path):
    tumour, specimen, volume = speckled_specimen()
    shape = volume.shape
    image_path = io.write_image(tmp_path / "case7.tif", volume, SPACING)
    tumour_path = io.write_mask(tmp_path / "case7_tumour.tif", tumour, SPACING)
    out = tmp_path / "out"
    result = M.margins_for_files(image_path, tumour_path, out)
    assert result["case"] == "case7"
    for name in ("case7_margins.csv", "case7_margins.png", "case7_specimen.tif"):
        assert (out / name).stat().st_size > 0
    assert (out / "case7_margins.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    found = io.read_mask(out / "case7_specimen.tif", expected_shape=shape)
    assert 2 * (found & specimen).sum() / (found.sum() + specimen.sum()) > 0.95
    with open(out / "case7_margins.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1 and rows[0]["case"] == "case7"
    assert rows[0]["closest_face"] == "anterior"  # sphere 4 - 1.6 - 1.6 = 0.8 mm below
    assert float(rows[0]["distance_mm"]) == pytest.approx(0.8, abs=TOL)
    assert rows[0]["close_margin"] == "True" and rows[0]["anterior_close"] == "True"
    assert list(rows[0]) == M.MARGIN_COLUMNS
    with pytest.raises(UsageError, match="already exists"):
        M.margins_for_files(image_path, tumour_path, out)
    # Given a specimen mask, none is written; force overwrites the CSV.
    specimen_path = io.write_mask(tmp_path / "case7_box.tif", specimen, SPACING)
    again = M.margins_for_files(image_path, tumour_path, out, specimen_path=specimen_path,
                                spacing_mm=(0.5, 0.2, 0.25), force=True)
    assert "specimen" not in again["outputs"]
    assert again["distance_mm"] == pytest.approx(0.8, abs=1e-9)
    assert any("overrides the file's 0.5 x 0.2 x 0.3 mm" in w for w in again["warnings"])
    with open(out / "case7_margins.csv", newline="") as handle:
        assert "overrides" in next(csv.DictReader(handle))["warnings"]
    assert not list(out.glob(f"*{PARTIAL_MARK}*"))


def test_margins_for_files_shows_the_display_channel(tmp_path, monkeypatch):
    # Channels us and pa: margins come from the masks (the specimen found in the first
    # channel), and the figure draws the channel asked for behind the contours.
    tumour, _, volume = speckled_specimen()
    pa = np.linspace(0.0, 900.0, volume.size, dtype=np.float32).reshape(volume.shape)
    us_path = io.write_image(tmp_path / "images" / "us" / "case7.tif", volume, SPACING)
    pa_path = io.write_image(tmp_path / "images" / "pa" / "case7.tif", pa, SPACING)
    tumour_path = io.write_mask(tmp_path / "case7_tumour.tif", tumour, SPACING)
    drawn, figure = [], M.margin_figure

    def spy(image, *args, **kwargs):  # the image behind the contours of each figure
        drawn.append(np.asarray(image))
        return figure(image, *args, **kwargs)

    monkeypatch.setattr(M, "margin_figure", spy)
    alone = M.margins_for_files(us_path, tumour_path, tmp_path / "us_only")
    result = M.margins_for_files({"us": us_path, "pa": pa_path}, tumour_path, tmp_path / "out",
                                 display_channel="pa")
    assert np.array_equal(drawn[0], volume) and np.array_equal(drawn[1], pa)
    assert result["display_channel"] == "pa" and "display_channel" not in alone
    assert result["case"] == "case7" and result["distance_mm"] == alone["distance_mm"]
    assert np.array_equal(io.read_mask(tmp_path / "out" / "case7_specimen.tif"),
                          io.read_mask(tmp_path / "us_only" / "case7_specimen.tif"))
    assert (tmp_path / "out" / "case7_margins.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(UsageError, match="display_channel 'doppler'.*'us', 'pa'"):
        M.margins_for_files({"us": us_path, "pa": pa_path}, tumour_path, tmp_path / "x",
                            display_channel="doppler")
    short = io.write_image(tmp_path / "images" / "pa" / "short.tif", pa[:-1], SPACING)
    with pytest.raises(DataError, match="channel 'pa' has shape") as info:
        M.margins_for_files({"us": us_path, "pa": short}, tumour_path, tmp_path / "y")
    assert info.value.path == str(short)


def test_margins_for_files_needs_spacing(tmp_path):
    image = io.write_image(tmp_path / "nospacing.tif", np.zeros((4, 8, 8), np.uint8))
    mask = io.write_mask(tmp_path / "mask.tif", np.zeros((4, 8, 8), bool))
    with pytest.raises(DataError, match="spacing_mm") as info:
        M.margins_for_files(image, mask, tmp_path / "out")
    assert info.value.path == str(image)
    with pytest.raises(UsageError, match="orientation"):
        M.margins_for_files(image, mask, tmp_path / "out", spacing_mm=SPACING, orientation="z:up-down")


def test_write_margins_csv_many_specimens(tmp_path):
    tumour, specimen = box_and_sphere(SHAPE, BOX, (10, 6, 12), 3.0)
    one = dict(M.margins(tumour, specimen, SPACING), case="a")
    two = dict(M.margins(np.zeros_like(tumour), specimen, SPACING), case="b")
    path = M.write_margins_csv([one, M.margins_row(two)], tmp_path / "all.csv")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["case"] for r in rows] == ["a", "b"]
    assert float(rows[0]["distance_mm"]) == pytest.approx(2.2) and rows[1]["distance_mm"] == ""
    assert rows[1]["warnings"] == "no tumour found"
    with pytest.raises(UsageError):
        M.write_margins_csv([one], path, force=False)


def test_margin_figure_without_tumour_and_no_overwrite(tmp_path):
    _, specimen = box_and_sphere((16, 30, 24), ((2, 13), (3, 26), (2, 21)), (0, 0, 0), 0.1)
    empty = np.zeros_like(specimen)
    result = M.margins(empty, specimen, SPACING)
    image = specimen * 100.0
    path = M.margin_figure(image, empty, specimen, result, tmp_path / "fig.png", SPACING)
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(UsageError):
        M.margin_figure(image, empty, specimen, result, path, SPACING, force=False)


def test_tumour_breaking_the_surface_counts_as_specimen_and_ink(tmp_path):
    """A dark tumour open to the medium cannot be hole-filled into the tissue mask;
    margins_for_files adds it, so the case reads as ink on tumour, not 'outside'."""
    rng = np.random.default_rng(3)
    shape, box = (24, 60, 40), ((4, 19), (8, 51), (6, 33))
    # Centre 1.6 + 0.6 mm above the anterior face at row 8 (y = 1.6 mm): the sphere
    # of radius 1.6 mm pokes out of the box into the coupling medium.
    tumour, specimen = box_and_sphere(shape, box, (6.0, 2.0, 6.0), 1.6)
    volume = rng.rayleigh(8, shape)
    volume[specimen] = rng.rayleigh(80, int(specimen.sum()))
    volume[tumour] = rng.rayleigh(12, int(tumour.sum()))
    image = np.clip(volume, 0, 255).astype(np.uint8)
    assert not M.specimen_mask(image, SPACING)[tumour].all()  # the thresholded mask misses it
    image_path = io.write_image(tmp_path / "open.tif", image, SPACING)
    tumour_path = io.write_mask(tmp_path / "open_tumour.tif", tumour, SPACING)
    result = M.margins_for_files(image_path, tumour_path, tmp_path / "out")
    assert result["ink_on_tumour"] and result["distance_mm"] == 0
    assert result["closest_face"] == "anterior"
    assert not any("outside" in w for w in result["warnings"])


def test_margins_cli_takes_channels_by_name_and_refuses_a_mix(tmp_path, capsys):
    from bcseg.cli import main

    tumour, _, volume = speckled_specimen()
    pa = np.linspace(0.0, 900.0, volume.size, dtype=np.float32).reshape(volume.shape)
    us_path = io.write_image(tmp_path / "us" / "case7.tif", volume, SPACING)
    pa_path = io.write_image(tmp_path / "pa" / "case7.tif", pa, SPACING)
    tumour_path = io.write_mask(tmp_path / "case7_tumour.tif", tumour, SPACING)
    assert main(["margins", "--image", f"us={us_path}", "--image", f"pa={pa_path}",
                 "--tumour", str(tumour_path), "--out", str(tmp_path / "out"),
                 "--display-channel", "pa"]) == 0
    with open(tmp_path / "out" / "case7_margins.csv", newline="") as handle:
        assert next(csv.DictReader(handle))["case"] == "case7"
    capsys.readouterr()
    assert main(["margins", "--image", str(us_path), "--image", f"pa={pa_path}",
                 "--tumour", str(tumour_path), "--out", str(tmp_path / "mixed")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "NAME=PATH" in err
    assert not (tmp_path / "mixed").exists()
    # a channel not given is the flag's error, named as the flag (it said "display_channel")
    assert main(["margins", "--image", f"us={us_path}", "--image", f"pa={pa_path}", "--tumour",
                 str(tumour_path), "--out", str(tmp_path / "other"), "--display-channel", "PA"]) == 2
    assert capsys.readouterr().err == ("bcseg: error: --display-channel: 'PA' is not a channel of "
                                       "--image; its channels are 'us', 'pa'\n")
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("hole", ["tumour", "cavity"])
def test_an_enclosed_hole_in_the_specimen_mask_is_inside_the_specimen(hole):
    """A specimen mask drawn without its tumour (tissue and tumour as separate labels),
    or with an air bubble inside, holds a hole. Its walls are no surface that ink
    reaches: the tumour in it read as 'wholly outside', and a bubble 1 mm from the
    tumour became a 1 mm lateral margin where every face is 6 mm away."""
    spacing = (1.0, 0.5, 0.25)
    specimen = np.zeros((20, 40, 80), bool)
    specimen[2:18, 4:36, 8:72] = True
    tumour = np.zeros_like(specimen)
    tumour[8:12, 16:24, 32:48] = True
    # Gaps to the box's outer voxels, by hand: z (8 - 2) x 1 mm, y (16 - 4) x 0.5 mm,
    # x (32 - 8) x 0.25 mm, and the same on the far sides: 6 mm each.
    holed = specimen.copy()
    if hole == "tumour":
        holed[tumour] = False
    else:
        holed[8:12, 16:24, 52:60] = False  # 4 voxels (1 mm) lateral of the tumour
    result = M.margins(tumour, holed, spacing)
    assert result["warnings"] == []
    assert result["distance_mm"] == pytest.approx(6.0)
    assert {face: f["distance_mm"] for face, f in result["faces"].items()} == pytest.approx(
        dict.fromkeys(M.FACES, 6.0))
    assert result["specimen_volume_mm3"] == pytest.approx(16 * 32 * 64 * 0.125)
    assert result["tumour_volume_mm3"] == pytest.approx(4 * 8 * 16 * 0.125)


def test_small_voxels_keep_their_volume_and_distance_in_the_csv(tmp_path):
    # At 0.02 mm voxels a 3x3x3 tumour is 27 * 0.02^3 = 0.000216 mm^3; the table wrote
    # every number with 4 decimals, "0.0002" (7% low), and one voxel (8e-06 mm^3) as "0".
    spacing = (0.02, 0.02, 0.02)
    specimen = np.zeros((12, 12, 12), bool)
    specimen[1:11, 1:11, 1:11] = True
    tumour = np.zeros_like(specimen)
    tumour[4:7, 4:7, 4:7] = True
    single = np.zeros_like(specimen)
    single[5, 5, 5] = True
    rows = [dict(M.margins(tumour, specimen, spacing), case="cube"),
            dict(M.margins(single, specimen, spacing), case="voxel")]
    path = M.write_margins_csv(rows, tmp_path / "small.csv")
    with open(path, newline="") as handle:
        cube, voxel = csv.DictReader(handle)
    assert float(cube["tumour_volume_mm3"]) == pytest.approx(27 * 0.02 ** 3, rel=1e-9)
    assert float(cube["specimen_volume_mm3"]) == pytest.approx(1000 * 0.02 ** 3, rel=1e-9)
    assert float(cube["distance_mm"]) == pytest.approx(3 * 0.02, rel=1e-9)  # voxel 4 to surface 1
    assert float(voxel["tumour_volume_mm3"]) == pytest.approx(0.02 ** 3, rel=1e-9)
    assert float(voxel["distance_mm"]) == pytest.approx(4 * 0.02, rel=1e-9)  # voxel 5 to surface 1


def test_a_close_margin_threshold_beyond_any_specimen_is_refused():
    """close_mm=1e6 (um typed as mm) marked every margin close without a word."""
    tumour = np.zeros((4, 8, 8), bool)
    tumour[1:3, 3:5, 3:5] = True
    specimen = np.ones_like(tumour)
    with pytest.raises(ValueError, match="close_mm must be from 0 to 100 mm"):
        M.margins(tumour, specimen, (1.0, 1.0, 1.0), close_mm=1e6)
    assert M.margins(tumour, specimen, (1.0, 1.0, 1.0), close_mm=100.0)["close_mm"] == 100.0


def test_a_stack_of_one_voxel_along_an_axis_is_refused():
    """A (1, H, W) stack gave 0 mm on the 'anterior' face and NaN superior/inferior."""
    specimen = np.zeros((1, 10, 10), bool)
    specimen[0, 1:9, 1:9] = True
    tumour = np.zeros_like(specimen)
    tumour[0, 4:6, 4:6] = True
    with pytest.raises(DataError, match="at least 2 voxels along each axis"):
        M.margins(tumour, specimen, (2.0, 0.5, 1.0))


def test_a_specimen_mask_drawn_without_its_tumour_at_the_surface_reads_as_ink(tmp_path, capsys):
    """Tissue and tumour drawn as separate labels, the tumour reaching the medial surface
    (the inked case): the tumour is a notch open to the outside, which hole filling
    cannot bring in, and the row read 'tumour lies wholly outside the specimen mask; no
    margins' with blank flags instead of 0 mm, ink on tumour. Distances by hand."""
    from bcseg.cli import main

    spacing = (2.0, 0.5, 0.25)
    box = np.zeros((10, 20, 30), bool)
    box[1:9, 2:18, 3:27] = True            # the whole specimen, tumour included
    tumour = np.zeros_like(box)
    tumour[4:6, 8:10, 3:6] = True          # on the medial face (x = 3)
    image = np.where(box, 150, 10).astype(np.uint8)
    image_path = io.write_image(tmp_path / "s1.tif", image, spacing)
    tumour_path = io.write_mask(tmp_path / "s1_tumour.tif", tumour, spacing)
    tissue_path = io.write_mask(tmp_path / "s1_tissue.tif", box & ~tumour, spacing)
    assert main(["margins", "--image", str(image_path), "--tumour", str(tumour_path),
                 "--specimen", str(tissue_path), "--out", str(tmp_path / "out")]) == 0
    with open(tmp_path / "out" / "s1_margins.csv", newline="", encoding="utf-8") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["ink_on_tumour"] == "True" and float(row["distance_mm"]) == 0
    assert row["closest_face"] == "medial" and row["warnings"] == ""
    # gaps between outer voxel centres: y (8 - 2) and (17 - 9) x 0.5 mm, z (4 - 1) and
    # (8 - 5) x 2 mm, x (26 - 5) x 0.25 mm; the volume is the box's, 8 x 16 x 24 voxels
    # (Superior and inferior come out 6.005 mm: surface voxels near the medial edge face
    # medially, so the nearest of those faces lies one x voxel aside, within one voxel.)
    assert {face: float(row[f"{face}_mm"]) for face in M.FACES} == pytest.approx(
        {"anterior": 3.0, "posterior": 4.0, "superior": 6.0, "inferior": 6.0,
         "medial": 0.0, "lateral": 5.25}, abs=0.01)
    assert float(row["specimen_volume_mm3"]) == pytest.approx(8 * 16 * 24 * 0.25)
    assert float(row["tumour_volume_mm3"]) == pytest.approx(2 * 2 * 3 * 0.25)


def test_a_stack_named_with_dollar_signs_is_measured_and_drawn(tmp_path, capsys):
    """The figure's title holds the file's stem, and matplotlib read 's$^{$' as math:
    the command failed with 'bcseg: error: ValueError: ... ParseSyntaxException',
    naming no file, after measuring; 's$1$' was titled as an italic 's1'."""
    from bcseg.cli import main

    spacing = (2.0, 0.5, 0.25)
    box = np.zeros((10, 20, 30), bool)
    box[1:9, 2:18, 3:27] = True
    tumour = np.zeros_like(box)
    tumour[3, 15, 15] = True
    image_path = io.write_image(tmp_path / "s$^{$.tif", np.where(box, 150, 10).astype(np.uint8), spacing)
    tumour_path = io.write_mask(tmp_path / "tumour.tif", tumour, spacing)
    tissue_path = io.write_mask(tmp_path / "tissue.tif", box, spacing)
    assert main(["margins", "--image", str(image_path), "--tumour", str(tumour_path),
                 "--specimen", str(tissue_path), "--out", str(tmp_path / "out")]) == 0
    assert "error" not in capsys.readouterr().err
    with open(tmp_path / "out" / "s$^{$_margins.csv", newline="", encoding="utf-8") as handle:
        (row,) = list(csv.DictReader(handle))
    # by hand: y (17 - 15) x 0.5 mm to the posterior face, the nearest (medial is 3 mm)
    assert float(row["distance_mm"]) == pytest.approx(1.0) and row["closest_face"] == "posterior"
    assert (tmp_path / "out" / "s$^{$_margins.png").is_file()


def test_ink_on_tumour_is_a_close_margin_at_a_close_limit_of_0(tmp_path):
    """--close-mm 0 is allowed; a margin of 0 mm (ink on tumour) was then not close
    (0 < 0 is false), though the docs say ink implies close."""
    box = ((2, 41), (2, 97), (2, 65))
    centre = (10.5, (box[1][0] + 10) * 0.2, 10.2)  # the sphere's top row on the anterior surface
    tumour, specimen = box_and_sphere((44, 100, 68), box, centre, 2.0)
    result = M.margins(tumour, specimen, SPACING, close_mm=0.0)
    assert result["distance_mm"] == 0.0
    assert (result["ink_on_tumour"], result["close_margin"]) == (True, True)
    face = result["faces"]["anterior"]
    assert (face["ink_on_tumour"], face["close_margin"]) == (True, True)
    assert not result["faces"]["posterior"]["close_margin"]  # a margin of mm, not close at 0
