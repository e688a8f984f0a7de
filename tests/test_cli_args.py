"""Command-line values that were dropped or taken for something else without a word.

Each refusal must be one line on stderr naming the flag, exit 2 (usage), before any
output exists. Real phantom data, the real command line in this process.
"""

from __future__ import annotations

import os
import subprocess
import sys

import imageio.v3 as iio
import pytest

from bcseg.cli import main
from test_robustness import IMAGE, models  # noqa: F401 (a fixture)
from test_safety import _prediction_copies, hashes


def refused(capsys, argv: list, flag: str) -> str:
    """Run ``bcseg ARGV``; assert exit 2 and one error line naming ``flag``."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:  # argparse's refusal, before the command runs
        code = stop.code
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1, (code, out, err)
    assert lines[0].startswith("bcseg: error: ") and flag in lines[0], err
    return lines[0]


@pytest.mark.parametrize("argv, flag", [
    # --folds-file '' was dropped: the folds came from kfold_by_group instead
    (["split", "{data}", "--out", "{out}/s.json", "--folds-file", ""], "--folds-file"),
    (["export-nnunet", "{data}", "{out}", "--dataset-id", "1", "--name", "x", "--folds-file", ""],
     "--folds-file"),
    (["split", "{data}", "--out", "{out}/s.json", "--folds-file="], "--folds-file"),
    # --observer '' and --init '' were dropped: the recipe's union, a model from scratch
    (["train", "{data}", "--out", "{out}", "--epochs", "1", "--observer", ""], "--observer"),
    (["train", "{data}", "--out", "{out}", "--epochs", "1", "--init", " "], "--init"),
    # Path('') is the current folder: checked, or loaded as the model
    (["check", ""], "data"),
    (["predict", "{data}/images", "--model", "", "--out", "{out}"], "--model"),
    (["predict", "{data}/images", "--postprocess", "", "--out", "{out}"], "--postprocess"),
    (["evaluate", "--pred", "", "--truth", "{data}", "--out", "{out}"], "--pred"),
])
def test_an_empty_value_is_refused_naming_its_flag(tmp_path, capsys, phantom_root, argv, flag):
    out = tmp_path / "out"
    argv = [a.format(data=phantom_root, out=out) for a in argv]
    line = refused(capsys, argv, flag)
    assert "empty" in line, line
    assert not out.exists()


@pytest.mark.parametrize("extra, flag, other", [
    # the spacing went nowhere: masks keep their input's, and no margins were measured
    (["--spacing", "1x0.2x0.2"], "--spacing", "--margins"),
    # min_size is read by the 'small' step alone; the run's post-processing has none
    (["--min-size", "50"], "--min-size", "small"),
    (["--min-size", "50", "--postprocess", "largest,fill"], "--min-size", "small"),
])
def test_a_predict_flag_without_the_one_it_acts_through_is_refused(tmp_path, capsys, models,
                                                                   extra, flag, other):
    iio.imwrite(tmp_path / "scan.png", IMAGE)
    out = tmp_path / "out"
    line = refused(capsys, ["predict", tmp_path / "scan.png", "--model", models["2d"], "--out", out,
                            "--no-progress", *extra], flag)
    assert other in line and "min_size" not in line, line
    # the remedy names the flag too: it said "add small to postprocess", a settings key
    assert flag != "--min-size" or line.endswith("add small to --postprocess"), line
    assert not out.exists()


def test_evaluate_refuses_a_model_the_honest_protocol_would_not_read(tmp_path, capsys, phantom_root,
                                                                     models):
    out = tmp_path / "out"
    line = refused(capsys, ["evaluate", "--pred", phantom_root / "masks" / "observer1", "--truth",
                            phantom_root, "--out", out, "--model", models["2d"]], "--model")
    assert "--protocol reference" in line, line
    assert not out.exists()


def test_a_name_the_output_encoding_lacks_is_printed_escaped_not_a_failure(tmp_path):
    """Under a locale that is not UTF-8, stdout cannot encode 'φ': the phantom was
    written, then printing its folder's name failed the run with exit 1."""
    out = tmp_path / "phantôme_φ"
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    done = subprocess.run([sys.executable, "-m", "bcseg.cli", "phantom", str(out), "--n", "1",
                           "--shape", "8", "16", "16"], capture_output=True, text=True, env=env,
                          timeout=120, encoding="ascii", errors="strict")
    assert done.returncode == 0 and not done.stderr, done.stderr
    assert "phant\\xf4me_\\u03c6" in done.stdout and (out / "specimens.csv").is_file()


def test_evaluate_refuses_an_observer_named_twice(tmp_path, capsys, phantom_root):
    """--observer observer1 --observer observer1 was scored, and recorded in
    summary.json as two observers asked for."""
    pred = tmp_path / "pred"
    pred.mkdir()
    for mask in (phantom_root / "masks" / "observer2").glob("*.tif"):
        (pred / f"{mask.stem}_mask.tif").write_bytes(mask.read_bytes())
    out = tmp_path / "out"
    line = refused(capsys, ["evaluate", "--pred", pred, "--truth", phantom_root, "--out", out,
                            "--no-report", "--observer", "observer1", "--observer", "observer1"],
                   "observer")
    assert "'observer1' is named twice" in line, line
    assert not out.exists()


@pytest.mark.parametrize("command", ["evaluate", "export-nnunet"])
def test_an_unknown_observer_names_the_flag(tmp_path, capsys, phantom_root, command):
    """'bcseg: error: unknown observer 'nosuch'; ...' named no option, while train's
    --observer is named (the one line must say which option to change)."""
    pred = tmp_path / "pred"
    pred.mkdir()
    for mask in (phantom_root / "masks" / "observer2").glob("*.tif"):
        (pred / f"{mask.stem}_mask.tif").write_bytes(mask.read_bytes())
    out = tmp_path / "out"
    argv = {"evaluate": ["evaluate", "--pred", pred, "--truth", phantom_root, "--out", out, "--no-report"],
            "export-nnunet": ["export-nnunet", phantom_root, out, "--dataset-id", "5", "--name", "x"]}[command]
    line = refused(capsys, [*argv, "--observer", "nosuch"], "--observer")
    assert line.startswith("bcseg: error: --observer: unknown observer") and "'nosuch'" in line, line
    assert not out.exists()


def test_a_size_limit_under_one_byte_is_a_setting_error_not_every_file(tmp_path, capsys, phantom_root,
                                                                         monkeypatch):
    """BCSEG_MAX_IMAGE_GB=1e-30 became a limit of 0 bytes: check listed every image as
    'too large (... over the 0 GiB limit)' and blamed the data, exit 3."""
    monkeypatch.setenv("BCSEG_MAX_IMAGE_GB", "1e-30")
    capsys.readouterr()
    assert main(["check", str(phantom_root)]) == 4
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "BCSEG_MAX_IMAGE_GB='1e-30'" in lines[0], lines


def test_teacher_weight_is_taken_for_a_teacher_the_recipe_names(tmp_path, capsys, phantom_root):
    """--teacher-weight was refused as 'needs --teacher' when the recipe's train.teacher
    named the teacher: the recipe's weight could not be set from the command line."""
    recipe = tmp_path / "student.toml"
    recipe.write_text('[train]\nteacher = ["absent_teacher.keras"]\nepochs = 1\n', encoding="utf-8")
    out = tmp_path / "run"
    capsys.readouterr()
    code = main(["train", str(phantom_root), "--out", str(out), "--config", str(recipe),
                 "--teacher-weight", "0.3"])
    [line] = capsys.readouterr().err.splitlines()
    # past the weight's check, to the teacher itself (absent here, so nothing trains)
    assert code == 4 and "absent_teacher.keras" in line and "--teacher-weight" not in line, line
    assert not out.exists()


@pytest.mark.parametrize("steps", [",", "largest,", "largest,,fill", " , "])
def test_postprocess_with_an_empty_step_is_refused(tmp_path, capsys, phantom_root, steps):
    """--postprocess ',' (two unset variables, "$A,$B") was taken as no post-processing,
    overriding the run's tuned choice without a word; an empty item beside steps was
    dropped as if never typed."""
    out = tmp_path / "out"
    line = refused(capsys, ["predict", phantom_root / "images", "--postprocess", steps, "--out", out],
                   "--postprocess")
    assert "empty" in line, line
    assert not out.exists()


@pytest.mark.parametrize("value", ["1e300", "1e308"])
def test_a_size_limit_beyond_any_memory_is_a_setting_error(tmp_path, capsys, phantom_root, monkeypatch,
                                                           value):
    """BCSEG_MAX_IMAGE_GB=1e300 overflowed converting GiB to bytes: every command
    stopped with 'OverflowError: cannot convert float infinity to integer', exit 1."""
    monkeypatch.setenv("BCSEG_MAX_IMAGE_GB", value)
    capsys.readouterr()
    assert main(["check", str(phantom_root)]) == 4
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and f"BCSEG_MAX_IMAGE_GB='{value}'" in lines[0], lines
    assert "Overflow" not in lines[0]


@pytest.mark.parametrize("command", ["train", "phantom"])
def test_predict_refuses_the_folder_of_another_commands_whole_result(tmp_path, capsys, models, command):
    """predict --out RUN wrote its masks into a training run's own folder: 'train
    --resume' and '--force' then refused the run ('holds the output of bcseg predict'),
    and phantom --force its dataset, until the user deleted the masks by hand."""
    from bcseg.atomic import write_text
    from bcseg.outputs import claim

    folder = tmp_path / "result"
    with claim(folder, command):
        write_text(folder / "config.toml", "[model]\n")
    before = sorted(p.name for p in folder.iterdir())
    iio.imwrite(tmp_path / "scan.png", IMAGE)
    line = refused(capsys, ["predict", tmp_path / "scan.png", "--model", models["2d"], "--out", folder,
                            "--no-progress"], str(folder))
    assert f"'bcseg {command}'" in line, line
    assert sorted(p.name for p in folder.iterdir()) == before
    # a subfolder of its own is predict's, and left alone by the run (docs/safety.md)
    assert main(["predict", str(tmp_path / "scan.png"), "--model", str(models["2d"]), "--out",
                 str(folder / "peek"), "--no-progress"]) == 0


@pytest.mark.parametrize("where", [".", "predictions"])
@pytest.mark.parametrize("command", ["evaluate", "margins", "split"])
def test_no_command_writes_into_a_runs_folders(tmp_path, capsys, phantom_root, command, where):
    """As predict: 'evaluate --out RUN/predictions', 'margins --out RUN' or 'split --out
    RUN/predictions/s.json' wrote into a training run's folders, and 'train --force' then
    refused the run ('holds the output of bcseg evaluate') until the files were deleted by
    hand. A new subfolder of the run is the command's own."""
    import numpy as np

    from bcseg.atomic import write_text
    from bcseg.data import io
    from bcseg.outputs import claim

    run = tmp_path / "run"
    mask = np.zeros((12, 48, 48), bool)
    mask[4:8, 10:30, 10:30] = True
    with claim(run, "train"):
        write_text(run / "config.toml", "[model]\n")
        io.write_mask(run / "predictions" / "specimen_000_mask.tif", mask, (1.0, 0.25, 0.25))
    before = sorted(p.relative_to(run).as_posix() for p in run.rglob("*"))
    stack = phantom_root / "images" / "specimen_000.tif"

    def argv(folder):
        return {"evaluate": ["evaluate", "--pred", run / "predictions", "--truth", phantom_root,
                             "--out", folder, "--no-report"],
                "margins": ["margins", "--image", stack, "--tumour", run / "predictions" /
                            "specimen_000_mask.tif", "--out", folder],
                "split": ["split", phantom_root, "--out", folder / "s.json", "--k", "2"]}[command]

    line = refused(capsys, argv(run / where), str(run / where))
    assert "'bcseg train'" in line and "Error" not in line, line
    assert sorted(p.relative_to(run).as_posix() for p in run.rglob("*")) == before
    assert main([str(a) for a in argv(run / "peek")]) == 0  # a subfolder of its own


@pytest.mark.parametrize("where", ["truth", "truth/tumour", "masks/observer1"])
@pytest.mark.parametrize("command", ["split", "evaluate", "predict", "export-onnx"])
def test_only_predict_writes_into_a_phantoms_folders_and_only_into_images(tmp_path, capsys, models,
                                                                          command, where):
    """A phantom's folders were all left out of the refusal of a whole result's folders,
    for the masks predicted into images/: 'split --out data/truth/s.json' or 'evaluate
    --out data/truth/tumour' wrote among the true masks, and 'phantom data --force'
    then refused the dataset until the files were deleted by hand."""
    from bcseg.data.phantom import write_phantom

    data = tmp_path / "data"
    write_phantom(data, n=2, shape=(8, 32, 32), truth=True)
    pred = _prediction_copies(data, tmp_path / "pred")
    before = hashes(data)
    stack = data / "images" / "specimen_000.tif"
    folder = data / where
    argv = {"split": ["split", data, "--out", folder / "s.json", "--k", "2"],
            "evaluate": ["evaluate", "--pred", pred, "--truth", data, "--out", folder,
                         "--no-report"],
            "predict": ["predict", stack, "--model", models["2d"], "--out", folder,
                        "--no-progress"],
            "export-onnx": ["export-onnx", models["2d"], "--out", folder / "m.onnx"]}[command]
    line = refused(capsys, argv, str(folder))
    assert "'bcseg phantom'" in line or "is a folder of the dataset" in line, line
    assert hashes(data) == before


def test_predict_still_writes_into_a_phantoms_images(tmp_path, models):
    """Beside the refusals above: masks predicted into images/ stay as documented."""
    from bcseg.data.phantom import write_phantom

    data = tmp_path / "data"
    write_phantom(data, n=2, shape=(8, 32, 32), truth=True)
    stack = data / "images" / "specimen_000.tif"
    assert main(["predict", str(stack), "--model", str(models["2d"]), "--out", str(data / "images"),
                 "--no-progress"]) == 0
    assert (data / "images" / "specimen_000_mask.tif").is_file()


@pytest.mark.parametrize("command", ["phantom", "ensemble"])
def test_export_onnx_refuses_the_folder_of_another_commands_whole_result(tmp_path, capsys, models, command):
    """export-onnx --out DATA/m.onnx wrote into a phantom's dataset (or an ensemble's
    folder): 'phantom --force' then refused it as holding export-onnx's output."""
    from bcseg.atomic import write_text
    from bcseg.outputs import claim

    folder = tmp_path / "result"
    with claim(folder, command):
        write_text(folder / "specimens.csv", "case\n")
    before = sorted(p.name for p in folder.iterdir())
    line = refused(capsys, ["export-onnx", models["2d"], "--out", folder / "m.onnx"], str(folder))
    assert f"'bcseg {command}'" in line, line
    assert sorted(p.name for p in folder.iterdir()) == before


def test_margins_refuse_an_nnunet_datasets_folders(tmp_path, capsys, phantom_root):
    """margins --out DatasetNNN/imagesTr put S_specimen.tif and S_margins.png among the
    images nnU-Net reads as cases, and kept 'export-nnunet --force' from replacing it."""
    import shutil

    from bcseg.atomic import write_text
    from bcseg.outputs import claim

    dataset = tmp_path / "Dataset001_X"
    stack = phantom_root / "images" / "specimen_000.tif"
    with claim(dataset, "export-nnunet"):
        write_text(dataset / "dataset.json", "{}\n")
        (dataset / "imagesTr").mkdir()
        shutil.copy(stack, dataset / "imagesTr" / "X_0001_0000.tif")
        write_text(dataset / "imagesTr" / "X_0001.json", "{}\n")
    before = sorted(p.relative_to(dataset).as_posix() for p in dataset.rglob("*"))
    line = refused(capsys, ["margins", "--image", stack, "--tumour", phantom_root / "masks" / "observer1" /
                            "specimen_000.tif", "--out", dataset / "imagesTr"], str(dataset / "imagesTr"))
    assert "'bcseg export-nnunet'" in line, line
    assert sorted(p.relative_to(dataset).as_posix() for p in dataset.rglob("*")) == before


def test_report_refuses_to_put_its_page_into_a_phantoms_dataset(tmp_path, capsys):
    """'bcseg report DATA' of a phantom holding margins below wrote DATA/report.html, and
    'phantom DATA --force' then refused the dataset as holding report's output."""
    from bcseg.atomic import write_text
    from bcseg.outputs import claim

    data = tmp_path / "data"
    with claim(data, "phantom"):
        write_text(data / "specimens.csv", "id\n")
    with claim(data / "m", "margins"):
        write_text(data / "m" / "s_margins.csv", "case,distance_mm,tumour_volume_mm3\ns,1.5,20\n")
    before = sorted(p.relative_to(data).as_posix() for p in data.rglob("*"))
    line = refused(capsys, ["report", data], str(data))
    assert "'bcseg phantom'" in line and "give the folder of the evaluation" in line, line
    assert sorted(p.relative_to(data).as_posix() for p in data.rglob("*")) == before
    assert main(["report", str(data / "m")]) == 0  # the margins' own folder


HUGE = "9" * 4000  # below Python's 4300-digit limit of int(): a number the flags take


@pytest.mark.parametrize("argv, flag", [
    (["phantom", "{out}", "--n", HUGE], "--n"),
    (["phantom", "{out}", "--shape", "8", "8", HUGE], "--shape"),
    (["train", "{data}", "--out", "{out}", "--epochs", "1", "--fold", HUGE], "--fold"),
    # numbers to float(): 4000 nines are inf, refused by the range with the text shown
    (["train", "{data}", "--out", "{out}", "--teacher", "t.keras", "--teacher-weight", HUGE],
     "--teacher-weight"),
    (["margins", "--image", "i.tif", "--tumour", "t.tif", "--out", "{out}", "--close-mm", HUGE],
     "--close-mm"),
], ids=["phantom n", "phantom shape", "train fold", "teacher weight", "close mm"])
def test_a_huge_number_is_shown_cut_short_in_its_refusal(tmp_path, capsys, phantom_root, argv,
                                                         flag):
    """Each was refused with all 4000 digits in the line (the flag bounds it after parsing)."""
    out = tmp_path / "out"
    line = refused(capsys, [a.format(data=phantom_root, out=out) for a in argv], flag)
    assert len(line) < 200 and " characters)" in line, line
    assert not out.exists()


@pytest.mark.parametrize("argv, said", [
    (["--seed", str(2**70)], "must be a whole number from 0 to 2147483647"),
    (["--seed", str(2**31)], "must be a whole number from 0 to 2147483647"),
    (["--seed", "-1"], "must be a whole number from 0 to 2147483647"),
    # past int()'s 4300 digits: whole numbers too, refused as out of range, not as no number
    (["--seed", "9" * 5000], "must be a whole number from 0 to 2147483647"),
    (["--seed", "-" + "9" * 5000], "must be a whole number from 0 to 2147483647"),
    (["--n", "9" * 5000], "is too large a number"),
    (["--shape", "8", "8", "9" * 5000], "is too large a number"),
    (["--shape", "8", "8", "-" + "9" * 5000], "must be a whole number >= 8"),
], ids=["seed 2**70", "seed 2**31", "seed -1", "seed of 5000 digits", "seed of -5000 digits",
        "n of 5000 digits", "shape of 5000 digits", "shape of -5000 digits"])
def test_a_phantom_number_out_of_range_is_one_line_before_the_folder(tmp_path, capsys, argv, said):
    """--seed 2**70 was taken (every other seed stops at 2**31 - 1), and a number past the
    4300 digits int() reads was 'not a whole number (plain digits, like 10)'."""
    out = tmp_path / "out"
    line = refused(capsys, ["phantom", out, "--n", "1", "--shape", "8", "8", "8", *argv]
                   if argv[0] == "--seed" else ["phantom", out, *argv], argv[0])
    assert said in line and len(line) < 250, line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("threshold", ["0.99999999", "1e-50"])
def test_a_threshold_that_float32_makes_0_or_1_is_refused(tmp_path, capsys, phantom_root,
                                                          threshold):
    """Both passed as inside (0, 1); compared with float32 probabilities they are 1 (every
    mask empty) and 0 (every pixel of any probability marked), without a word."""
    out = tmp_path / "out"
    line = refused(capsys, ["predict", phantom_root / "images", "--model", tmp_path / "none.keras",
                            "--out", out, "--threshold", threshold], "--threshold")
    assert "between 0 and 1 (both excluded, also as a 32-bit float)" in line, line
    assert not out.exists()


def test_a_min_size_no_image_can_hold_is_refused(tmp_path, capsys, phantom_root):
    """--min-size 10**30 passed and emptied every mask without a word; 2**64 voxels, a
    byte each, is the most any image may hold at the largest BCSEG_MAX_IMAGE_GB."""
    out = tmp_path / "out"
    argv = ["predict", phantom_root / "images", "--model", tmp_path / "none.keras", "--out", out,
            "--postprocess", "small", "--min-size"]
    for size in (10**30, 2**64 + 1):
        line = refused(capsys, [*argv, size], "--min-size")
        assert "must be a whole number from 0 to 18446744073709551616" in line, line
    assert not out.exists()


@pytest.mark.parametrize("argv", [
    ["train", "{data}", "--out", "{out}", "--epochs", "1", "--observer", "x" * 5000],
    ["export-nnunet", "{data}", "{out}", "--dataset-id", "1", "--name", "x",
     "--observer", "x" * 5000],
], ids=["train", "export-nnunet"])
def test_an_unknown_observer_of_5000_characters_is_shown_cut_short(tmp_path, capsys, phantom_root,
                                                                   argv):
    out = tmp_path / "out"
    line = refused(capsys, [a.format(data=phantom_root, out=out) for a in argv], "--observer")
    assert len(line) < 300 and "(5002 characters)" in line, line
    assert not out.exists()


@pytest.mark.parametrize("orientation", [
    "z:up-down", "z:superior-superior,y:anterior-posterior,x:medial-lateral"])
def test_margins_refuses_a_bad_orientation_naming_the_flag(tmp_path, capsys, phantom_root,
                                                           orientation):
    """Both were refused as "orientation '...': ...", naming no flag (exit 2 all the same)."""
    out = tmp_path / "out"
    line = refused(capsys, ["margins", "--image", phantom_root / "images" / "specimen_000.tif",
                            "--tumour", phantom_root / "masks" / "observer1" / "specimen_000.tif",
                            "--out", out, "--orientation", orientation], "--orientation")
    assert line.startswith(f"bcseg: error: argument --orientation: '{orientation}': "), line
    assert not out.exists()


def test_close_mm_of_minus_zero_is_recorded_as_zero(tmp_path, capsys, phantom_root):
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["margins", "--image", str(phantom_root / "images" / "specimen_000.tif"),
                 "--tumour", str(phantom_root / "masks" / "observer1" / "specimen_000.tif"),
                 "--out", str(out), "--close-mm", "-0"]) == 0
    row = (out / "specimen_000_margins.csv").read_text(encoding="utf-8").splitlines()
    header, values = row[0].split(","), row[1].split(",")
    assert values[header.index("close_mm")] == "0"


@pytest.mark.parametrize("argv, flag", [
    (["phantom", "{out}", "--n", "\u0661"], "--n"),  # Arabic-Indic one
    (["split", "{data}", "--out", "{out}/s.json", "--k", "1_0"], "--k"),
    (["train", "{data}", "--out", "{out}", "--epochs", "\uff11"], "--epochs"),  # full-width one
    (["margins", "--image", "{data}/images/specimen_000.tif", "--tumour",
      "{data}/masks/observer1/specimen_000.tif", "--out", "{out}", "--close-mm", "1_5"],
     "--close-mm"),
    (["predict", "{data}/images", "--out", "{out}", "--threshold", "\u0660.\u0665"], "--threshold"),
    (["predict", "{data}/images", "--out", "{out}", "--margins", "--spacing", "1x0_25x0_25"],
     "--spacing"),
], ids=["arabic-indic n", "underscore k", "full-width epochs", "underscore close-mm",
        "arabic-indic threshold", "underscore spacing"])
def test_a_number_not_in_plain_digits_is_refused(tmp_path, capsys, phantom_root, argv, flag):
    """int() and float() read these (--close-mm 1_5 as 15 mm, a spacing of 0_25 as 25 mm);
    a fold file refuses them as not plain digits, and so do the flags now."""
    out = tmp_path / "out"
    line = refused(capsys, [a.format(data=phantom_root, out=out) for a in argv], flag)
    assert "(plain digits, like " in line or "is not a spacing like 1x0.25x0.25" in line, line
    assert not out.exists()


def test_resuming_as_another_model_kind_is_a_usage_error_naming_model(tmp_path, capsys,
                                                                    phantom_root):
    """It was exit 4 naming the run's config.toml, as if that file were bad; every other
    flag that would change a resumed run is a usage error."""
    from bcseg.config import load_config, save_config

    run = tmp_path / "run"
    run.mkdir()
    save_config(load_config(None), run / "config.toml")
    line = refused(capsys, ["train", phantom_root, "--out", run, "--resume", "--model", "unet3d"],
                   "--model")
    assert "trained with a 2D model (unet2d); a resumed run keeps its model" in line, line
    assert sorted(p.name for p in run.iterdir()) == ["config.toml"]


def test_a_teacher_weight_that_float32_makes_0_is_refused(tmp_path, capsys, phantom_root):
    """1e-50 passed as above 0, and blended no teacher into the float32 targets."""
    out = tmp_path / "out"
    line = refused(capsys, ["train", phantom_root, "--out", out, "--teacher", "t.keras",
                            "--teacher-weight", "1e-50"], "--teacher-weight")
    assert "above 0 (also as a 32-bit float)" in line, line
    assert not out.exists()
