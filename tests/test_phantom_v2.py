"""Phantom v2: the easy phantom unchanged, realistic ultrasound, the PA channel, observers."""

from __future__ import annotations

import csv
import hashlib
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from bcseg.cli import main
from bcseg.data import io
from bcseg.data import phantom_us as us
from bcseg.data.phantom import _ambiguous_observers, make_specimen, write_phantom
from bcseg.data.phantom_pa import fluence

SPACING = (1.0, 0.25, 0.25)
SMALL = (12, 64, 64)
KEYS = ("image", "observer1", "observer2", "tumour", "tissue")


def digest(specimen: dict) -> str:
    h = hashlib.sha256()
    for key in KEYS:
        h.update(np.ascontiguousarray(specimen[key]).tobytes())
    return h.hexdigest()


def dice(a, b) -> float:
    return 2 * (a & b).sum() / (a.sum() + b.sum())


# Digests of the phantom before difficulty and channels existed (commit de13918).
@pytest.mark.parametrize("shape, seed, expected", [
    ((12, 48, 48), 0, "4ad8791f9580a8bcc43d26c5a12f4d50545b4e1f81e230fa8523bc01ef0b6fa3"),
    ((8, 32, 32), 3, "90f293b3ff82cfe9773217b8a972d12edcc7663c43fa19e376c059ea9f7bc72d"),
])
def test_easy_is_the_phantom_as_it_was(shape, seed, expected):
    assert digest(make_specimen(shape, seed=seed)) == expected
    assert digest(make_specimen(shape, seed=seed, difficulty="easy", channels=("us", "pa"))) == expected


@pytest.fixture(scope="module")
def realistic() -> list[dict]:
    return [make_specimen(SMALL, seed=seed, difficulty="realistic", channels=("us", "pa"))
            for seed in range(10)]


def test_realistic_is_deterministic_and_us_does_not_depend_on_pa(realistic):
    again = make_specimen(SMALL, seed=2, difficulty="realistic")
    assert digest(again) == digest(realistic[2])
    assert again["attributes"]["us_contrast"] == realistic[2]["attributes"]["us_contrast"]
    assert digest(realistic[2]) != digest(realistic[3])


# --------------------------------------------------------------------------- speckle

def intensity_correlation(intensity: np.ndarray, axis: int, lag: int = 1) -> float:
    centred = intensity - intensity.mean()
    n = intensity.shape[axis]
    first = np.take(centred, range(0, n - lag), axis=axis)
    second = np.take(centred, range(lag, n), axis=axis)
    return float((first * second).mean() / centred.var())


def test_speckle_is_fully_developed_with_the_designed_correlation_lengths():
    # A homogeneous region, no attenuation or noise: the envelope before log compression.
    image, envelope = us.bmode(np.random.default_rng(0), np.ones((16, 96, 96)), us.Scan(), SPACING)
    assert envelope.mean() / envelope.std() == pytest.approx(1.91, rel=0.05)  # Rayleigh
    # Log-compressed Rayleigh speckle has an sd of 5.57 dB, whatever its mean.
    assert (20 * np.log10(envelope)).std() == pytest.approx(5.57, rel=0.05)
    intensity = envelope ** 2
    for axis in range(3):
        # A Gaussian PSF of sd s gives an intensity correlation exp(-lag^2 / (2 s^2)).
        rho = intensity_correlation(intensity, axis)
        measured = np.sqrt(-1 / (2 * np.log(rho)))
        assert measured == pytest.approx(us.PSF_SIGMA_MM[axis] / SPACING[axis], rel=0.25), axis
    # Beam-shaped: longer laterally than axially; neighbouring slices share speckle.
    assert intensity_correlation(intensity, 2) > 2 * intensity_correlation(intensity, 1)
    assert intensity_correlation(intensity, 0) > 0.3
    assert image.dtype == np.uint8


def test_attenuation_is_compensated_by_tgc():
    echo = np.ones((8, 128, 64))
    scan = us.Scan(attenuation_db_mm=0.4, tgc_db_mm=0.4)
    _, envelope = us.bmode(np.random.default_rng(1), echo, scan, SPACING)
    top, bottom = envelope[:, :32].mean(), envelope[:, -32:].mean()
    assert bottom / top == pytest.approx(1.0, abs=0.15)
    _, uncompensated = us.bmode(np.random.default_rng(1), echo, us.Scan(attenuation_db_mm=0.4), SPACING)
    # The blocks' centres are 96 rows (24 mm) apart: 0.4 dB/mm makes 9.6 dB of amplitude.
    ratio = uncompensated[:, -32:].mean() / uncompensated[:, :32].mean()
    assert ratio == pytest.approx(10 ** (-9.6 / 20), rel=0.1)


# --------------------------------------------------------------------------- realistic anatomy

def test_tumours_range_from_hypoechoic_to_nearly_isoechoic(realistic):
    designed, measured = [], []
    for specimen in realistic:
        tumour, tissue = specimen["tumour"], specimen["tissue"]
        assert tumour.any() and not (tumour & ~tissue).any()
        intensity = specimen["envelope"] ** 2
        # Compare the tumour's top with tissue beside it that no tumour shadows or enhances.
        above = np.cumsum(tumour, axis=1) - tumour
        ring = ndimage.binary_dilation(tumour, iterations=4) & tissue & ~tumour & (above == 0)
        top = tumour & (above <= 3)
        designed.append(specimen["attributes"]["us_contrast"])
        measured.append(1 - intensity[top].mean() / intensity[ring].mean())
    assert min(designed) < 0.2 and max(designed) > 0.6
    assert min(measured) < 0.2 and max(measured) > 0.5
    assert np.corrcoef(designed, measured)[0, 1] > 0.7


def test_tumour_is_heterogeneous_and_specimen_irregular(realistic):
    for specimen in realistic:
        image, tumour = specimen["image"].astype(float), specimen["tumour"]
        inside = ndimage.binary_erosion(tumour, iterations=2)
        smooth = ndimage.gaussian_filter(image, (0, 2, 2))  # average the speckle away
        if inside.sum() > 50:
            assert smooth[inside].std() > 3
    # A rounded box has a convex outline in every slice; these specimens do not.
    from skimage.morphology import convex_hull_image

    concave = [1 - s["tissue"][6].sum() / convex_hull_image(s["tissue"][6]).sum() for s in realistic]
    assert max(concave) > 0.03


def test_margins_and_posterior_features_vary(realistic):
    specimens = realistic
    attributes = [s["attributes"] for s in specimens]
    assert {"spiculated", "circumscribed"} <= {a["margin"] for a in attributes}
    assert {"shadow", "enhancement"} <= {a["posterior"] for a in attributes}
    assert any(a["artefacts"] for a in attributes)
    for specimen in specimens:
        if specimen["attributes"]["posterior"] == "shadow":
            tumour = specimen["tumour"]
            below = (np.cumsum(tumour, axis=1) > 0) & ~tumour & specimen["tissue"]
            beside = specimen["tissue"] & ~(np.cumsum(tumour, axis=1) > 0)
            beside[:, : int(np.argwhere(tumour)[:, 1].max())] = False  # the same depths only
            if below.sum() > 100 and beside.sum() > 100:
                envelope = specimen["envelope"]
                assert envelope[below].mean() < envelope[beside].mean()


def test_no_artefacts_changes_nothing_else():
    for seed in range(8):
        with_them = make_specimen(SMALL, seed=seed, difficulty="realistic")
        if with_them["attributes"]["artefacts"]:
            without = make_specimen(SMALL, seed=seed, difficulty="realistic", artefacts=False)
            assert without["attributes"]["artefacts"] == ""
            assert np.array_equal(with_them["tumour"], without["tumour"])
            assert not np.array_equal(with_them["image"], without["image"])
            return
    pytest.fail("no specimen among 8 drew an artefact")


# --------------------------------------------------------------------------- observers

def test_observers_disagree_more_where_the_border_is_ambiguous():
    tumour = np.zeros((10, 64, 64), bool)
    yy, xx = np.mgrid[:64, :64]
    tumour[2:8] = (yy - 32) ** 2 + (xx - 32) ** 2 < 18 ** 2
    ambiguity = np.zeros(tumour.shape)
    ambiguity[:, :, :32] = 1.0  # left half invisible, right half crisp
    border = tumour ^ ndimage.binary_erosion(tumour, structure=us.IN_PLANE)
    border = ndimage.binary_dilation(border, structure=us.IN_PLANE, iterations=4)
    disagreement = {"left": [], "right": []}
    for seed in range(4):
        tight, generous = _ambiguous_observers(np.random.default_rng(seed), tumour, ambiguity)
        differ = tight ^ generous
        disagreement["left"].append(differ[:, :, :32][border[:, :, :32]].mean())
        disagreement["right"].append(differ[:, :, 32:][border[:, :, 32:]].mean())
    assert np.mean(disagreement["left"]) > 1.5 * np.mean(disagreement["right"])


def test_ambiguity_is_high_for_isoechoic_and_low_for_dark_tumours():
    tumour = np.zeros((6, 48, 48), bool)
    tumour[:, 16:32, 16:32] = True
    border = tumour & ~ndimage.binary_erosion(tumour, structure=us.IN_PLANE)
    for level, low, high in ((0.1, 0.0, 0.05), (0.95, 0.9, 1.0)):
        visible = np.where(tumour, level, 1.0)
        ambiguity = us.boundary_ambiguity(visible, tumour, SPACING)[border]
        assert low <= ambiguity.mean() <= high, level


# --------------------------------------------------------------------------- photoacoustics

def test_pa_is_co_registered_float_with_a_wide_range(realistic):
    for specimen in realistic:
        pa = specimen["channels"]["pa"]
        assert pa.shape == specimen["image"].shape and pa.dtype == np.float32
        assert pa.min() >= 0
        # Bright sources stand far above the noise floor of the gel around the specimen.
        assert np.percentile(pa, 99.9) > 20 * np.median(pa[~specimen["tissue"]])


def test_pa_rim_contrast_is_independent_of_ultrasound(realistic):
    rim_ratio = []
    for specimen in realistic:
        tumour, tissue = specimen["tumour"], specimen["tissue"]
        pa = specimen["channels"]["pa"]
        rim = ndimage.binary_dilation(tumour, iterations=2) & ~ndimage.binary_erosion(tumour, iterations=2)
        away = tissue & ~ndimage.binary_dilation(tumour, iterations=6)
        rim_ratio.append(np.median(pa[rim]) / np.median(pa[away]))
    pa_contrast = [s["attributes"]["pa_contrast"] for s in realistic]
    us_contrast = [s["attributes"]["us_contrast"] for s in realistic]
    assert rim_ratio[int(np.argmax(pa_contrast))] > rim_ratio[int(np.argmin(pa_contrast))]
    # Drawn apart: the strongest PA rim is not simply the darkest US tumour.
    assert abs(np.corrcoef(pa_contrast, us_contrast)[0, 1]) < 0.9
    assert min(pa_contrast) < 0.35 and max(pa_contrast) > 0.65


def test_fluence_decays_with_depth_below_the_surface():
    tissue = np.zeros((2, 40, 8), bool)
    tissue[:, 10:] = True
    light = fluence(tissue, SPACING, per_mm=0.1)
    assert light[0, 10, 0] == pytest.approx(1.0)
    assert light[0, 30, 0] == pytest.approx(np.exp(-0.1 * 20 * 0.25))


# --------------------------------------------------------------------------- files and CLI

def test_cli_writes_both_channels_masks_and_attributes(tmp_path):
    out = tmp_path / "pa phantom"
    done = subprocess.run([sys.executable, "-m", "bcseg.cli", "phantom", str(out), "--n", "2",
                           "--shape", "8", "40", "40", "--channels", "us,pa",
                           "--difficulty", "realistic"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    names = ["specimen_000.tif", "specimen_001.tif"]
    for channel, dtype in (("us", np.uint8), ("pa", np.float32)):
        assert sorted(p.name for p in (out / "images" / channel).iterdir()) == names
        array = tifffile.imread(out / "images" / channel / names[0])
        assert array.shape == (8, 40, 40) and array.dtype == dtype
        assert io.read_spacing(out / "images" / channel / names[0]) == pytest.approx(SPACING)
    assert sorted(p.name for p in (out / "masks" / "observer1").iterdir()) == names
    with open(out / "specimens.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["id"] for r in rows] == ["specimen_000", "specimen_001"]
    assert all(0 <= float(r["us_contrast"]) <= 1 and 0 <= float(r["pa_contrast"]) <= 1 for r in rows)
    assert {r["difficulty"] for r in rows} == {"realistic"}


def test_single_us_channel_keeps_the_flat_layout(tmp_path):
    write_phantom(tmp_path / "flat", n=1, shape=(8, 32, 32), difficulty="realistic")
    assert [p.name for p in (tmp_path / "flat" / "images").iterdir()] == ["specimen_000.tif"]
    write_phantom(tmp_path / "pa", n=1, shape=(8, 32, 32), channels=("pa",))
    assert [p.name for p in (tmp_path / "pa" / "images").iterdir()] == ["pa"]


def test_bad_requests_are_refused_before_writing(tmp_path, capsys):
    with pytest.raises(ValueError, match="difficulty"):
        write_phantom(tmp_path / "a", n=1, shape=(8, 32, 32), difficulty="hard")
    with pytest.raises(ValueError, match="channels"):
        write_phantom(tmp_path / "b", n=1, shape=(8, 32, 32), channels=("us", "us"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    with pytest.raises(SystemExit) as stop:
        main(["phantom", str(tmp_path / "c"), "--channels", "us,ct"])
    assert stop.value.code == 2 and not (tmp_path / "c").exists()
    assert "argument --channels: 'us,ct' is not a list" in capsys.readouterr().err
