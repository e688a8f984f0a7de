"""``bcseg predict`` refuses bad inputs before it writes anything, and names every output
of a case by the case.

- ``--margins`` on a manifest of cases that share file names (one folder per patient)
  names margins files and rows by the case id, as the masks are.
- ``--margins`` checks every stack's voxel size before the model loads.
- An input whose header shows the model cannot take it (a 2D image for a 3D model, a
  file with a channel axis) stops the run before the earlier inputs' masks exist.
- A named channel of one value (a PA stack of zeros) is refused before the first mask,
  as ``check`` and ``train`` refuse it.
- Margins refuse a spacing that makes their smoothing absurdly many voxels wide, and
  ``--spacing`` outside the plausible range is a usage error.

Real small TIFF files (the phantom) and real tiny models, through ``bcseg.cli.main``.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
import tifffile

from bcseg import outputs, rundir
from bcseg.cli import main
from bcseg.data import io
from bcseg.data.phantom import write_phantom
from bcseg.errors import DataError
from bcseg.learn.models import unet
from bcseg.measure.margins import margins, margins_for_files, specimen_mask
from bcseg.rundir import InferenceSettings, embed_settings
from test_robustness import one_error_line

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
SHAPE = (8, 32, 32)


def run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:  # argparse ends a usage error itself
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Tiny real models with the settings a trained one carries: grey 2D and 3D, and a
    2D model of the channels us and pa. A file that is no model proves a check ran
    before the model loaded (loading it would be exit 4)."""
    folder = tmp_path_factory.mktemp("models")
    keras.utils.set_random_seed(0)
    paths = {}
    for name, ndim, settings in (
            ("2d", 2, InferenceSettings(ndim=2)),
            ("3d", 3, InferenceSettings(ndim=3)),
            ("uspa", 2, InferenceSettings(ndim=2, channels=2, channel_names=("us", "pa"),
                                          normalisation={"us": "auto", "pa": "log"}))):
        paths[name] = folder / f"{name}.keras"
        unet(ndim=ndim, in_channels=settings.channels, base_filters=4, depth=2).save(paths[name])
        embed_settings(paths[name], settings)
    paths["broken"] = folder / "broken.keras"
    paths["broken"].write_bytes(b"not a model")
    return paths


@pytest.fixture(scope="module")
def stacks(tmp_path_factory) -> Path:
    """Phantom stacks of ultrasound and photoacoustic channels (with spacing). Read only."""
    root = tmp_path_factory.mktemp("uspa") / "data"
    write_phantom(root, n=2, shape=SHAPE, seed=1, channels=("us", "pa"))
    return root


def _stack(stacks: Path) -> Path:
    return sorted((stacks / "images" / "us").iterdir())[0]


def _per_patient_manifest(stacks: Path, folder: Path) -> Path:
    """manifest.csv of cases P1, P2, one folder each, holding files of the same names."""
    rows = ["id,image_us,image_pa,group"]
    for number, us in enumerate(sorted((stacks / "images" / "us").iterdir()), start=1):
        case = folder / f"P{number}"
        case.mkdir(parents=True)
        shutil.copy(us, case / "us.tif")
        shutil.copy(stacks / "images" / "pa" / us.name, case / "pa.tif")
        rows.append(f"P{number},P{number}/us.tif,P{number}/pa.tif,P{number}")
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder / "manifest.csv"


def _cases(table: Path) -> list[str]:
    with open(table, newline="", encoding="utf-8") as handle:
        return [row["case"] for row in csv.DictReader(handle)]


# --------------------------------------------------------------------------- naming

def test_a_grey_manifest_names_its_masks_by_case_as_evaluate_pairs_them(tmp_path, capsys, models, stacks):
    """A manifest of one image per case named masks after the file (P1/us.tif and P2/us.tif
    collided), and ``evaluate`` pairs them by case id: rows whose ids are other rows' file
    names (``b,a.tif`` and ``a,b.tif``) had each mask scored against the other image's
    observers, without a word."""
    data = tmp_path / "data"
    write_phantom(data, n=2, shape=SHAPE, seed=2)
    a, b = sorted((data / "images").iterdir())
    ma, mb = sorted((data / "masks" / "observer1").iterdir())
    (data / "manifest.csv").write_text(f"id,image,mask_observer1,group\n{b.stem},images/{a.name},"
                                       f"masks/observer1/{ma.name},g0\n{a.stem},images/{b.name},"
                                       f"masks/observer1/{mb.name},g1\n", encoding="utf-8")
    out, alone = tmp_path / "seg", tmp_path / "alone"
    code, _, err = run(capsys, "predict", data / "manifest.csv", "--model", models["2d"], "--out", out,
                       "--no-progress", "--save-prob")
    assert code == 0, err
    assert sorted(p.name for p in out.glob("*.tif")) == sorted(f"{n}_{k}.tif" for n in (a.stem, b.stem)
                                                          for k in ("mask", "prob"))
    code, _, err = run(capsys, "predict", a, "--model", models["2d"], "--out", alone, "--no-progress",
                       "--save-prob")
    assert code == 0, err
    # case b.stem is image a: its map is a's, not b's
    assert np.array_equal(tifffile.imread(out / f"{b.stem}_prob.tif"),
                          tifffile.imread(alone / f"{a.stem}_prob.tif"))
    assert not np.array_equal(tifffile.imread(out / f"{a.stem}_prob.tif"),
                              tifffile.imread(alone / f"{a.stem}_prob.tif"))


def test_margins_force_with_a_given_specimen_leaves_predicts_specimen_mask(tmp_path, capsys, models,
                                                                           stacks):
    """margins --force --specimen deleted predict's computed S_specimen.tif as if an
    earlier margins run had written it: --force replaces the command's own outputs only."""
    stack = _stack(stacks)
    out = tmp_path / "seg"
    code, _, err = run(capsys, "predict", stack, "--model", models["2d"], "--out", out, "--margins",
                       "--no-progress")
    assert code == 0, err
    case = stack.name.removesuffix(".tif")
    computed = out / f"{case}_specimen.tif"
    assert computed.is_file()
    for name in (f"{case}_margins.csv", f"{case}_margins.png"):  # the user moved these away
        (out / name).unlink()
    own = io.write_mask(tmp_path / "my_specimen.tif", io.read_mask(computed), io.read_spacing(computed))
    code, _, err = run(capsys, "margins", "--image", stack, "--tumour", out / f"{case}_mask.tif",
                       "--specimen", own, "--out", out, "--force")
    assert code == 0, err
    assert computed.is_file() and (out / f"{case}_margins.csv").is_file()


def test_margins_of_a_manifest_are_named_by_case_as_its_masks(tmp_path, capsys, models, stacks):
    manifest = _per_patient_manifest(stacks, tmp_path / "data")
    out = tmp_path / "seg"
    predict = ("predict", manifest, "--model", models["uspa"], "--out", out, "--no-progress")
    for extra in ((), ("--force",)):  # a forced rerun replaces them, one row per case
        code, _, err = run(capsys, *predict, "--margins", *extra)
        assert code == 0, err
        assert _cases(out / "margins.csv") == ["P1", "P2"]
        names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
        assert names == ["P1_margins.csv", "P1_margins.png", "P1_mask.tif", "P1_specimen.tif",
                         "P2_margins.csv", "P2_margins.png", "P2_mask.tif", "P2_specimen.tif",
                         "margins.csv"]
        assert _cases(out / "P2_margins.csv") == ["P2"]
    # Segmented again without --margins: each case's margins no longer match its mask.
    code, _, err = run(capsys, *predict, "--force")
    assert code == 0, err
    # The summary table goes with them: left with its header only, it said margins
    # were measured and none found.
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "P1_mask.tif", "P2_mask.tif"]
    assert "margins.csv" not in outputs.written(out)


# --------------------------------------------------------------------------- spacing

def test_margins_of_a_stack_without_spacing_are_refused_before_the_model_and_any_output(
        tmp_path, capsys, models, stacks):
    bare = tmp_path / "nosp.tif"
    tifffile.imwrite(bare, tifffile.imread(_stack(stacks)))  # no spacing in its header
    out = tmp_path / "seg3"
    for model, inputs in ((models["broken"], [bare]),  # refused before the model loads
                          (models["2d"], [_stack(stacks), bare])):  # a later input
        code, _, err = run(capsys, "predict", *inputs, "--model", model, "--out", out,
                           "--margins", "--save-prob", "--no-progress")
        assert code == 3, err
        line = one_error_line(err)
        assert "nosp.tif: " in line and "--spacing" in line and "spacing_mm" not in line
        assert not out.exists()
    code, _, err = run(capsys, "predict", bare, "--model", models["2d"], "--out", out, "--margins",
                       "--spacing", "0.5x0.2x0.2", "--no-progress")
    assert code == 0, err
    assert _cases(out / "margins.csv") == ["nosp"]


def test_margins_of_a_stack_whose_spacing_makes_the_smoothing_absurd_are_refused_before_any_mask(
        tmp_path, capsys, models, stacks):
    """A stack of 8 slices at 5 µm: the margins' 0.5 mm smoothing is 100 voxels wide
    along z, which margins refuse. predict --margins found it only after the stack's
    mask was written, and left that mask behind with the error."""
    tiny = tmp_path / "tiny.tif"
    io.write_image(tiny, tifffile.imread(_stack(stacks)), (0.005, 0.005, 0.005))
    out = tmp_path / "seg"
    for model, inputs in ((models["broken"], [tiny]), (models["2d"], [_stack(stacks), tiny])):
        code, _, err = run(capsys, "predict", *inputs, "--model", model, "--out", out, "--margins",
                           "--no-progress")
        assert code == 3, err
        assert one_error_line(err).startswith(f"bcseg: error: {tiny}: spacing 0.005 x 0.005 x 0.005 mm")
        assert not out.exists()


# --------------------------------------------------------------------------- headers

def test_a_later_2d_image_for_a_3d_model_is_refused_before_any_mask(tmp_path, capsys, models, stacks):
    flat = tmp_path / "img2d.tif"
    tifffile.imwrite(flat, tifffile.imread(_stack(stacks))[0])
    out = tmp_path / "O"
    code, _, err = run(capsys, "predict", _stack(stacks), flat, "--model", models["3d"], "--out", out,
                       "--no-progress")
    assert code == 3, err
    line = one_error_line(err)
    assert "img2d.tif: a 3D model segments (Z, H, W) stacks, not a 2D" in line
    assert not out.exists()
    # --keep-going segments the stack and reports the image, unread
    code, text, err = run(capsys, "predict", _stack(stacks), flat, "--model", models["3d"],
                          "--out", out, "--no-progress", "--keep-going")
    assert code == 3 and "img2d.tif: a 3D model" in one_error_line(err)
    assert "segmented 1 of 2" in text
    assert sorted(p.name for p in out.glob("*.tif")) == [f"{io.file_stem(_stack(stacks))}_mask.tif"]


@pytest.mark.parametrize("where", ["inside the model", "beside it"])
def test_a_3d_window_the_network_cannot_take_is_refused_naming_the_settings(where, tmp_path, capsys,
                                                                            models, stacks):
    """patch_size 7 for a U-Net that halves twice (sizes in 4s): the first window ended the
    run with a bare ValueError (exit 1, naming no file)."""
    model = tmp_path / "m" / "model.keras"
    model.parent.mkdir()
    unet(ndim=3, base_filters=4, depth=2).save(model)  # no settings inside: its run's beside it
    settings = InferenceSettings(ndim=3, patch_size=(7, 32, 32))
    if where == "beside it":
        rundir.write_settings(model.parent, settings)
    else:
        embed_settings(model, settings)
    out = tmp_path / "O"
    code, _, err = run(capsys, "predict", _stack(stacks), "--model", model, "--out", out, "--no-progress")
    assert code == 4, err
    named = model.parent / "inference.json" if where == "beside it" else model
    assert f"{named}: patch_size [7, 32, 32] must be multiples of 4" in one_error_line(err)
    assert not out.exists()


def test_a_later_file_with_a_channel_axis_is_refused_before_any_mask(tmp_path, capsys, models, stacks):
    volume = tifffile.imread(_stack(stacks))
    hyperstack = tmp_path / "twoch.tif"
    tifffile.imwrite(hyperstack, np.stack([volume, volume], axis=1), imagej=True,
                     metadata={"axes": "ZCYX"})
    out = tmp_path / "O"
    code, _, err = run(capsys, "predict", _stack(stacks), hyperstack, "--model", models["2d"],
                       "--out", out, "--no-progress")
    assert code == 3, err
    assert "twoch.tif: has 2 channels" in one_error_line(err)
    assert not out.exists()


# --------------------------------------------------------------------------- kernels

def _specimen_with_tumour() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    volume = rng.integers(0, 20, SHAPE).astype(np.uint8)
    volume[1:7, 4:28, 4:28] = rng.integers(120, 255, (6, 24, 24))
    specimen = np.zeros(SHAPE, bool)
    specimen[1:7, 4:28, 4:28] = True
    tumour = np.zeros(SHAPE, bool)
    tumour[3:5, 12:18, 12:18] = True
    return volume, specimen, tumour


@pytest.mark.parametrize("spacing", [(1e-4, 1e-4, 1e-4), (1e-12, 1e-6, 1e-6)],
                         ids=["plausible-but-tiny-for-the-stack", "absurd"])
def test_margins_refuse_a_spacing_that_makes_the_smoothing_absurd(spacing, tmp_path):
    volume, specimen, tumour = _specimen_with_tumour()
    with pytest.raises(DataError, match="spacing"):  # not MemoryError, nor minutes of work
        specimen_mask(volume, spacing)
    with pytest.raises(DataError, match="spacing"):
        margins(tumour, specimen, spacing)
    io.write_image(tmp_path / "s.tif", volume, (0.5, 0.2, 0.2))
    io.write_mask(tmp_path / "s_mask.tif", tumour)
    with pytest.raises(DataError) as caught:
        margins_for_files(tmp_path / "s.tif", tmp_path / "s_mask.tif", tmp_path / "out", spacing_mm=spacing)
    assert caught.value.path == str(tmp_path / "s.tif") and "spacing" in caught.value.problem
    assert not (tmp_path / "out").exists()
    assert specimen_mask(volume, (0.5, 0.2, 0.2)).any()  # a real spacing still works


@pytest.mark.parametrize("spacing", ["1e-12x1e-6x1e-6", "0x0.2x0.2", "nanx0.2x0.2", "200x0.2x0.2",
                                     "0.5x0.2"])
def test_spacing_on_the_command_line_is_range_checked_as_usage(spacing, tmp_path, capsys, models, stacks):
    out = tmp_path / "O"
    code, _, err = run(capsys, "predict", _stack(stacks), "--model", models["broken"], "--out", out,
                       "--margins", "--spacing", spacing)
    assert code == 2 and "--spacing" in one_error_line(err)
    assert not out.exists()
    code, _, err = run(capsys, "margins", "--image", _stack(stacks), "--tumour", _stack(stacks),
                       "--out", out, "--spacing", spacing)
    assert code == 2 and "--spacing" in one_error_line(err)
    assert not out.exists()


# --------------------------------------------------------------------------- pixels checked up front

def test_a_channel_the_model_does_not_take_is_not_checked_before_segmenting(tmp_path, capsys, stacks):
    """predict decodes every input before the first mask, but only what it segments: a
    model of the ultrasound channel alone was refused a case whose photoacoustic
    channel (never read) had another shape."""
    model = tmp_path / "us.keras"
    unet(ndim=2, in_channels=1, base_filters=4, depth=2).save(model)
    embed_settings(model, InferenceSettings(ndim=2, channels=1, channel_names=("us",),
                                            normalisation={"us": "auto"}))
    data = tmp_path / "data"
    shutil.copytree(stacks, data)
    odd = sorted((data / "images" / "pa").iterdir())[0]
    io.write_image(odd, np.zeros((SHAPE[0], SHAPE[1] + 2, SHAPE[2]), np.uint8))
    code, _, err = run(capsys, "predict", data, "--model", model, "--out", tmp_path / "seg", "--no-progress")
    assert code == 0, err
    assert len(list((tmp_path / "seg").glob("*_mask.tif"))) == 2


@pytest.mark.parametrize("value", [0.0, 7.0])
def test_a_constant_channel_is_refused_before_any_mask_as_train_refuses_it(value, tmp_path, capsys,
                                                                          models, stacks):
    """A photoacoustic stack that holds one value (the laser never fired, or an export
    of zeros) normalises to all zeros: check and train refuse it, predict segmented it
    from ultrasound alone and wrote a mask that looked like a result."""
    data = tmp_path / "data"
    shutil.copytree(stacks, data)
    blank = sorted((data / "images" / "pa").iterdir())[1]  # the later case: no mask before it
    io.write_image(blank, np.full(SHAPE, value, np.float32), io.read_image(blank)[1])
    out = tmp_path / "seg"
    code, _, err = run(capsys, "predict", data, "--model", models["uspa"], "--out", out, "--no-progress")
    assert code == 3, err
    line = one_error_line(err)
    assert line.startswith(f"bcseg: error: {blank}: channel 'pa' is constant (every value is {value:g})")
    assert not out.exists()
    # --keep-going segments the other case and names this one
    code, text, err = run(capsys, "predict", data, "--model", models["uspa"], "--out", out,
                          "--no-progress", "--keep-going")
    assert code == 3 and "channel 'pa' is constant" in one_error_line(err)
    assert "segmented 1 of 2" in text


def test_keep_going_segments_the_others_when_one_case_lacks_a_channel(tmp_path, capsys, models, stacks):
    """A specimen whose photoacoustic stack is missing is a bad input like any other:
    without --keep-going it stops the run before any output exists; with it, the other
    specimens are segmented and it is named at the end. It used to stop --keep-going
    too, with not one specimen segmented."""
    data = tmp_path / "data"
    shutil.copytree(stacks, data)
    gone = sorted((data / "images" / "pa").iterdir())[0]
    gone.unlink()
    lacking = data / "images" / "us" / gone.name
    out = tmp_path / "seg"
    code, _, err = run(capsys, "predict", data, "--model", models["uspa"], "--out", out, "--no-progress")
    assert code == 3 and one_error_line(err).startswith(f"bcseg: error: {lacking}: case '{gone.stem}' "
                                                        "has channel(s) us; the model takes channels us, pa")
    assert not out.exists()
    code, text, err = run(capsys, "predict", data, "--model", models["uspa"], "--out", out,
                          "--no-progress", "--keep-going")
    assert code == 3 and "has channel(s) us; the model takes channels us, pa" in one_error_line(err), err
    assert "segmented 1 of 2" in text
    assert [p.name for p in out.glob("*_mask.tif")] == [f"{io.file_stem(p)}_mask.tif"
                                                        for p in sorted((data / "images" / "pa").iterdir())]


def test_a_constant_file_for_a_one_channel_photoacoustic_model_is_refused(tmp_path, capsys, stacks):
    """Plain files given to a model of one named channel are that channel: a constant
    one holds no image for it either (a grey model still segments a blank frame)."""
    model = tmp_path / "pa.keras"
    unet(ndim=2, in_channels=1, base_filters=4, depth=2).save(model)
    embed_settings(model, InferenceSettings(ndim=2, channels=1, channel_names=("pa",),
                                            normalisation={"pa": "log"}))
    blank = tmp_path / "blank.tif"
    io.write_image(blank, np.zeros(SHAPE, np.float32), (0.5, 0.2, 0.2))
    pa = sorted((stacks / "images" / "pa").iterdir())[0]
    out = tmp_path / "seg"
    code, _, err = run(capsys, "predict", pa, blank, "--model", model, "--out", out, "--no-progress")
    assert code == 3 and one_error_line(err).startswith(f"bcseg: error: {blank}: channel 'pa' is constant")
    assert not out.exists()


def test_resume_does_not_decode_the_inputs_it_keeps(tmp_path, capsys, models):
    """--resume keeps complete outputs; their inputs were decoded again up front anyway
    (every stack of a large batch before the first remaining one), and one damaged
    since was refused though nothing would read it."""
    from test_bad_inputs import damaged_past_its_header

    data = tmp_path / "in"
    for name in ("a", "b"):
        io.write_image(data / f"{name}.tif", np.random.default_rng(0).integers(0, 255, SHAPE, dtype=np.uint8))
    out = tmp_path / "seg"
    code, _, err = run(capsys, "predict", data / "a.tif", "--model", models["3d"], "--out", out, "--no-progress")
    assert code == 0, err
    damaged_past_its_header(data / "a.tif", np.zeros(SHAPE, np.uint8))  # finished with: not read again
    code, _, err = run(capsys, "predict", data, "--model", models["3d"], "--out", out, "--resume", "--no-progress")
    assert code == 0, err
    assert sorted(p.name for p in out.glob("*_mask.tif")) == ["a_mask.tif", "b_mask.tif"]


def test_a_one_slice_stack_is_named_as_one_for_a_3d_model(tmp_path, models, capsys):
    """A NIfTI stack of one slice (1, H, W) reads as a 2D array (the singleton axis is
    dropped), and the refusal spoke of "a 2D array" that the user never saved."""
    import SimpleITK as sitk

    data = tmp_path / "in"
    data.mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(np.full((1, 32, 40), 90, np.uint8)), str(data / "one.nii.gz"))
    out = tmp_path / "seg"
    code, _, err = run(capsys, "predict", data / "one.nii.gz", "--model", models["3d"], "--out", out,
                       "--no-progress")
    line = one_error_line(err)
    assert code == 3 and "one.nii.gz: is a stack of one slice (stored shape (1, 32, 40))" in line, err
    assert not out.exists()



def test_a_stack_one_pixel_high_is_not_called_one_slice_for_a_3d_model(tmp_path, models, capsys):
    """A (Z, 1, X) stack (8 slices one pixel high) reads as a 2D (Z, X) array, and the
    3D model's refusal called it "a stack of one slice", which it is not."""
    data = tmp_path / "in"
    io.write_image(data / "row.tif", np.full((8, 1, 40), 90, np.uint8))
    out = tmp_path / "seg"
    code, _, err = run(capsys, "predict", data / "row.tif", "--model", models["3d"], "--out", out,
                       "--no-progress")
    line = one_error_line(err)
    assert code == 3 and "row.tif: is a stack with an axis of one pixel (stored shape (8, 1, 40))" in line, err
    assert "one slice" not in line
    assert not out.exists()

def test_a_cases_other_channel_in_the_output_folder_is_an_input_not_a_stale_output(tmp_path, capsys,
                                                                                    models, stacks):
    """Every channel a case reads is an input, not only its first: a manifest whose PA
    column names an earlier run's probability map had that map deleted by predict --force
    as the case's stale ``_prob.tif`` (and replaced by it with --save-prob)."""
    out = tmp_path / "seg"
    code, _, err = run(capsys, "predict", stacks, "--model", models["uspa"], "--out", out, "--save-prob",
                       "--no-progress")
    assert code == 0, err
    us = _stack(stacks)
    prob = out / f"{us.stem}_prob.tif"
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "manifest.csv").write_text(f"id,image_us,image_pa,group\n{us.stem},{us},{prob},g\n",
                                                  encoding="utf-8")
    before = prob.read_bytes()
    for extra in ((), ("--save-prob",)):
        code, _, err = run(capsys, "predict", tmp_path / "m", "--model", models["uspa"], "--out", out,
                           "--force", "--no-progress", *extra)
        assert code == 2, err
        assert one_error_line(err).startswith(f"bcseg: error: {prob}: is an input of this command")
        assert prob.read_bytes() == before


def test_two_cases_of_one_id_and_first_file_but_other_channels_are_not_one(tmp_path, capsys, models,
                                                                            stacks):
    """Two manifests holding case S of the same ultrasound file but different PA files
    are two cases whose masks would be one file: the second was dropped without a word
    ("segmented 1 of 1"), because inputs were told apart by their first file only."""
    us = _stack(stacks)
    other_pa = tmp_path / "other_pa.tif"
    shutil.copy(sorted((stacks / "images" / "pa").iterdir())[1], other_pa)
    for name, pa in (("a", stacks / "images" / "pa" / us.name), ("b", other_pa)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.csv").write_text(f"id,image_us,image_pa,group\nS,{us},{pa},g\n",
                                                      encoding="utf-8")
    out = tmp_path / "seg"
    code, _, err = run(capsys, "predict", tmp_path / "a", tmp_path / "b", "--model", models["uspa"],
                       "--out", out, "--no-progress")
    assert code == 2, err
    assert one_error_line(err).startswith(f"bcseg: error: {other_pa}: is channel 'pa' of case 'S'")
    assert not out.exists()
    # the same case given twice is still one input
    code, text, err = run(capsys, "predict", tmp_path / "a", tmp_path / "a" / "manifest.csv",
                          "--model", models["uspa"], "--out", out, "--no-progress")
    assert code == 0 and "segmented 1 of 1" in text, err


def test_a_dataset_of_hyperstacks_is_segmented_with_outputs_of_one_channels_shape(tmp_path, capsys, models,
                                                                                  stacks):
    """Channels on a C axis named by channels.json are a dataset predict takes; the
    outputs were to have the file's stored shape, which was read as one image and
    refused ("has 2 channels"): every case failed after the up-front checks passed."""
    from test_channels import write_hyperstack

    data = tmp_path / "data"
    for us in sorted((stacks / "images" / "us").iterdir()):
        image, spacing = io.read_image(us)
        write_hyperstack(data / "images" / us.name, image,
                         io.read_image(stacks / "images" / "pa" / us.name)[0], spacing=spacing)
    (data / "channels.json").write_text('["us", "pa"]')
    out = tmp_path / "seg"
    code, _, err = run(capsys, "predict", data, "--model", models["uspa"], "--out", out, "--no-progress")
    assert code == 0, err
    for us in sorted((stacks / "images" / "us").iterdir()):
        mask, spacing = io.read_image(out / f"{io.file_stem(us)}_mask.tif")
        assert mask.shape == SHAPE and spacing == pytest.approx(io.read_image(us)[1])


def test_a_phantom_written_inside_another_commands_folder_is_still_images(tmp_path, capsys, models):
    """demo writes its phantom inside its own claim, so the demo's record lists the
    phantom's images too (as 'demo'). predict DEMO/phantom/images took that record for
    one of results and refused the folder as 'only bcseg's outputs'; the phantom's own
    record, the nearer one, says they are data."""
    demo = tmp_path / "demo-run"
    with outputs.claim(demo, "demo", new=True):  # as run_demo writes its phantom
        write_phantom(demo / "phantom", n=2, shape=SHAPE, seed=0)
    code, _, err = run(capsys, "predict", demo / "phantom" / "images", "--model", models["3d"],
                       "--out", tmp_path / "out", "--no-progress")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").glob("*_mask.tif")) == [
        "specimen_000_mask.tif", "specimen_001_mask.tif"]


def test_a_busi_layout_is_segmented_as_its_cases_and_a_class_folder_without_its_masks(
        tmp_path, capsys, models):
    """predict on BUSI's root said it held no images (check and train read it as a
    dataset); on one class folder it segmented the masks too ('benign (1)_mask_mask.tif'),
    which evaluate then refused."""
    from test_bad_inputs import write_busi

    root = write_busi(tmp_path / "busi")
    code, _, err = run(capsys, "predict", root, "--model", models["2d"], "--out", tmp_path / "all",
                       "--no-progress")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "all").glob("*_mask.tif")) == [
        f"benign ({k})_mask.tif" for k in (1, 2, 3, 4)]
    code, _, err = run(capsys, "predict", root / "benign", "--model", models["2d"], "--out",
                       tmp_path / "class", "--no-progress")
    assert code == 0, err
    assert "4 file(s) named NAME_mask beside an image NAME" in err
    assert sorted(p.name for p in (tmp_path / "class").glob("*_mask.tif")) == [
        f"benign ({k})_mask.tif" for k in (1, 2, 3, 4)]
    # and the masks made there are scored against the dataset's own
    code, _, err = run(capsys, "evaluate", "--truth", root, "--pred", tmp_path / "all", "--out",
                       tmp_path / "eval", "--no-report")
    assert code == 0, err


def test_margins_table_of_a_resumed_run_lists_every_case(tmp_path, capsys, models, stacks, monkeypatch):
    """Ctrl-C in predict --margins while the second stack's figure was drawn, then
    --resume as bcseg says: margins.csv held the second case's row alone. The first
    case's margins were measured by the stopped run and skipped, its row never merged;
    the second, stopped between its table and its figure, was skipped without a figure."""
    import bcseg.measure.margins as margins_module

    inputs = sorted((stacks / "images" / "us").iterdir())
    out = tmp_path / "seg"
    real, drawn = margins_module.margin_figure, []

    def stopped_at_the_second(*args, **kwargs):
        drawn.append(1)
        if len(drawn) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(margins_module, "margin_figure", stopped_at_the_second)
    code, _, _ = run(capsys, "predict", *inputs, "--model", models["2d"], "--out", out, "--margins",
                     "--no-progress")
    assert code == 130 and not (out / "margins.csv").exists()
    monkeypatch.setattr(margins_module, "margin_figure", real)
    code, _, err = run(capsys, "predict", *inputs, "--model", models["2d"], "--out", out, "--margins",
                       "--resume", "--no-progress")
    assert code == 0, err
    names = [path.name.removesuffix(".tif") for path in inputs]
    assert _cases(out / "margins.csv") == names
    for name in names:  # each row is the case's own table's
        with open(out / f"{name}_margins.csv", newline="", encoding="utf-8") as handle:
            (own,) = list(csv.DictReader(handle))
        with open(out / "margins.csv", newline="", encoding="utf-8") as handle:
            (row,) = [r for r in csv.DictReader(handle) if r["case"] == name]
        assert row == own
        assert (out / f"{name}_margins.png").is_file()
