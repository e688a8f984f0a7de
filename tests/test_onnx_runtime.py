"""The ONNX runtime: export, parity with TensorFlow, and prediction without TensorFlow.

The parity tests need the ``onnx`` and ``export`` extras (onnxruntime; tf2onnx and
onnx) and skip with that reason when they are absent.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from bcseg import rundir
from bcseg.cli import main
from bcseg.data.phantom import write_phantom
from bcseg.measure.metrics import dice

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "src/bcseg/pretrained"
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


def _bundled_settings(run: Path) -> None:
    """The bundled model's own settings (inside its file) as the run's inference.json:
    the bundled folder's may record an ensemble of several files."""
    rundir.write_settings(run, rundir.archive_settings(BUNDLED / "busi_unet2d.keras"))


def _needs_onnx():
    for name, extra in (("onnxruntime", "onnx"), ("onnx", "export"), ("tf2onnx", "export")):
        pytest.importorskip(name, reason=f"{name} is not installed: pip install 'bcseg[{extra}]'")


@pytest.fixture(scope="module")
def busi_run(tmp_path_factory) -> Path:
    """The bundled BUSI model as a run folder, exported to ONNX beside its .keras file."""
    _needs_onnx()
    run = tmp_path_factory.mktemp("onnx") / "busi_run"
    run.mkdir()
    shutil.copyfile(BUNDLED / "busi_unet2d.keras", run / "model_best.keras")
    _bundled_settings(run)
    assert main(["export-onnx", str(run)]) == 0
    return run


def _inputs(folder: Path, phantom_root: Path, busi: Path | None) -> Path:
    """Two phantom stacks and, when BUSI is present, three of its images in one folder."""
    folder.mkdir()
    for stack in sorted((phantom_root / "images").iterdir())[:2]:
        shutil.copyfile(stack, folder / stack.name)
    if busi is not None:
        for kind, k in (("benign", 1), ("benign", 2), ("malignant", 1)):
            shutil.copyfile(busi / kind / f"{kind} ({k}).png", folder / f"{kind}_{k}.png")
    return folder


def _predict(model: Path, inputs: Path, out: Path, runtime: str) -> None:
    assert main(["predict", str(inputs), "--model", str(model), "--out", str(out), "--save-prob",
                 "--runtime", runtime, "--no-progress"]) == 0


def _compare(tf_out: Path, onnx_out: Path) -> list[tuple[str, float, float]]:
    rows = []
    for mask_file in sorted(tf_out.glob("*_mask.tif")):
        prob_file = mask_file.with_name(mask_file.name.replace("_mask", "_prob"))
        a, b = tifffile.imread(mask_file) > 0, tifffile.imread(onnx_out / mask_file.name) > 0
        diff = np.abs(tifffile.imread(prob_file) - tifffile.imread(onnx_out / prob_file.name)).max()
        rows.append((mask_file.name, dice(a, b) if a.any() or b.any() else 1.0, float(diff)))
    return rows


def test_masks_match_tensorflow_on_phantom_and_busi(busi_run, phantom_root, tmp_path):
    busi = REPO.parent / "shared/datasets/busi"
    inputs = _inputs(tmp_path / "in", phantom_root, busi if (busi / "folds.csv").is_file() else None)
    _predict(busi_run, inputs, tmp_path / "tf", "tensorflow")
    _predict(busi_run, inputs, tmp_path / "onnx", "onnx")
    rows = _compare(tmp_path / "tf", tmp_path / "onnx")
    assert len(rows) == len(list(inputs.iterdir()))
    for name, score, diff in rows:
        assert score >= 0.999, (name, score)
        assert diff <= 1e-4, (name, diff)  # float32 rounding, not a different network


def test_3d_windows_match_tensorflow(phantom_root, tmp_path):
    _needs_onnx()
    from bcseg.learn.models import unet

    run = tmp_path / "run3d"
    run.mkdir()
    unet(ndim=3, base_filters=4, depth=2, residual=True).save(run / "model_best.keras")
    (run / "inference.json").write_text(json.dumps({"ndim": 3, "threshold": 0.5, "postprocess": [],
                                                    "min_size": 0, "tta": False,
                                                    "patch_size": [8, 32, 32]}))
    assert main(["export-onnx", str(run)]) == 0
    inputs = _inputs(tmp_path / "in", phantom_root, None)
    _predict(run, inputs, tmp_path / "tf", "tensorflow")
    _predict(run, inputs, tmp_path / "onnx", "onnx")
    for name, _, diff in _compare(tmp_path / "tf", tmp_path / "onnx"):
        # An untrained model's probabilities sit near the threshold, so compare them, not masks.
        assert diff <= 1e-5, (name, diff)


def test_predicts_with_neither_tensorflow_nor_keras_importable(busi_run, phantom_root, tmp_path):
    inputs = _inputs(tmp_path / "in", phantom_root, None)
    _predict(busi_run, inputs, tmp_path / "tf", "tensorflow")
    blocker = ("import sys; sys.modules['tensorflow'] = sys.modules['keras'] = None; "
               "from bcseg.cli import main; sys.exit(main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", blocker, "predict", str(inputs), "--model",
                           str(busi_run), "--out", str(tmp_path / "onnx"), "--runtime", "onnx",
                           "--save-prob", "--no-progress"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for name, score, _ in _compare(tmp_path / "tf", tmp_path / "onnx"):
        assert score >= 0.999, (name, score)


def test_run_without_onnx_file_is_one_line_model_error(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    _bundled_settings(run)
    image = tmp_path / "image.tif"
    tifffile.imwrite(image, np.zeros((32, 32), np.uint8))
    assert main(["predict", str(image), "--model", str(run), "--out", str(tmp_path / "out"),
                 "--runtime", "onnx"]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(run) in err[0] and "export-onnx" in err[0]
    assert not (tmp_path / "out").exists()


def test_the_onnx_runtime_without_a_model_asks_for_one_before_anything(tmp_path, capsys):
    """With no --model it ran the bundled .keras file, refused as 'not a .onnx file; export
    it first' after printing that the bundled model was used: exporting it changed nothing."""
    image = tmp_path / "image.tif"
    tifffile.imwrite(image, np.zeros((32, 32), np.uint8))
    capsys.readouterr()
    assert main(["predict", str(image), "--out", str(tmp_path / "out"), "--runtime", "onnx"]) == 2
    said = capsys.readouterr()
    err = said.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bcseg: error: --runtime: onnx runs a model exported"), err
    assert "--model" in err[0] and said.out == "" and not (tmp_path / "out").exists()


def test_a_runs_onnx_file_that_is_a_broken_link_is_named_so(tmp_path, capsys):
    """It read as the run holding no model_best.onnx ('write it with: bcseg export-onnx'),
    while the name was there to see (a link to a disk not mounted)."""
    run = tmp_path / "run"
    run.mkdir()
    _bundled_settings(run)
    (run / "model_best.onnx").symlink_to(tmp_path / "unmounted" / "model_best.onnx")
    image = tmp_path / "image.tif"
    tifffile.imwrite(image, np.zeros((32, 32), np.uint8))
    assert main(["predict", str(image), "--model", str(run), "--out", str(tmp_path / "out"),
                 "--runtime", "onnx"]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"bcseg: error: {run / 'model_best.onnx'}: is a broken "
                                               "symbolic link"), err
    assert not (tmp_path / "out").exists()


def test_corrupt_onnx_file_is_one_line_model_error(tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: pip install 'bcseg[onnx]'")
    run = tmp_path / "run"
    run.mkdir()
    (run / "model_best.onnx").write_bytes(b"not an onnx model")
    image = tmp_path / "image.tif"
    tifffile.imwrite(image, np.zeros((32, 32), np.uint8))
    assert main(["predict", str(image), "--model", str(run), "--out", str(tmp_path / "out"),
                 "--runtime", "onnx"]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model_best.onnx" in err[0]
    assert not (tmp_path / "out").exists()


def test_export_refuses_to_overwrite_without_force(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(BUNDLED / "busi_unet2d.keras", run / "model_best.keras")
    (run / "model_best.onnx").write_bytes(b"mine")
    assert main(["export-onnx", str(run)]) == 2
    assert "--force" in capsys.readouterr().err
    assert (run / "model_best.onnx").read_bytes() == b"mine"


def test_export_force_replaces_only_an_earlier_export(tmp_path, capsys):
    """--out with --force overwrote any file: the run's own model, a dataset image, a
    link; a folder or a non-.onnx name failed late with a raw OSError."""
    _needs_onnx()
    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(BUNDLED / "busi_unet2d.keras", run / "model_best.keras")
    _bundled_settings(run)
    write_phantom(tmp_path / "data", n=2, shape=(8, 24, 24))
    image = sorted((tmp_path / "data" / "images").iterdir())[0]
    (tmp_path / "mine.onnx").write_bytes(b"mine")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    # the output folder's checks come first: data/images is one of the dataset's
    for out, problem in ((run / "model_best.keras", "does not end in .onnx"),
                         (image, "images: is a folder of the dataset"),
                         (run, "is a folder"),
                         (tmp_path / "mine.onnx", "was not written by bcseg")):
        capsys.readouterr()
        assert main(["export-onnx", str(run), "--out", str(out), "--force"]) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and problem in err[0], err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert main(["export-onnx", str(run)]) == 0          # an earlier export is replaced with --force
    assert main(["export-onnx", str(run), "--force"]) == 0


def _ensemble_folder(folder: Path) -> Path:
    """The bundled model twice over, as an ensemble folder's two members."""
    folder.mkdir()
    own = rundir.archive_settings(BUNDLED / "busi_unet2d.keras")
    members = []
    for name in ("a.keras", "b.keras"):
        shutil.copyfile(BUNDLED / "busi_unet2d.keras", folder / name)
        members.append(rundir.member_settings(name, own))
    rundir.write_settings(folder, own.replace(members=tuple(members), info={}))
    return folder


def test_an_ensemble_is_neither_exported_as_one_member_nor_run_by_the_onnx_runtime(tmp_path, capsys):
    """export-onnx took an ensemble folder's first member and called the file the
    folder's export; --runtime onnx on the folder advised that export."""
    folder = _ensemble_folder(tmp_path / "ensemble")
    before = sorted(p.name for p in folder.iterdir())
    assert main(["export-onnx", str(folder)]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(folder) in err[0] and "ensemble of 2 models" in err[0]
    assert sorted(p.name for p in folder.iterdir()) == before  # no .onnx written

    image = tmp_path / "image.tif"
    tifffile.imwrite(image, np.zeros((32, 32), np.uint8))
    assert main(["predict", str(image), "--model", str(folder), "--out", str(tmp_path / "out"),
                 "--runtime", "onnx"]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ensemble of several models" in err[0] and "export-onnx" not in err[0]
    assert not (tmp_path / "out").exists()

    kfold = tmp_path / "cv"  # a k-fold run's folds: no inference.json lists them yet
    for k in (0, 1):
        (kfold / f"fold_{k}").mkdir(parents=True)
        shutil.copyfile(BUNDLED / "busi_unet2d.keras", kfold / f"fold_{k}" / "model_best.keras")
    assert main(["predict", str(image), "--model", str(kfold), "--out", str(tmp_path / "out"),
                 "--runtime", "onnx"]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(kfold) in err[0] and "ensemble of several models" in err[0]


def test_the_export_of_an_ensembles_member_runs_as_the_member_does(tmp_path, capsys):
    """A member of an ensemble folder named alone runs on its own settings; its export,
    which export-onnx writes beside it, was refused: the folder's inference.json 'lists
    ensemble members, so it is not the settings of the one model a.onnx'."""
    _needs_onnx()
    folder = _ensemble_folder(tmp_path / "ensemble")
    assert main(["export-onnx", str(folder / "a.keras")]) == 0
    image = tmp_path / "image.tif"
    tifffile.imwrite(image, np.random.default_rng(0).integers(0, 255, (40, 40), dtype=np.uint8))
    for runtime, model in (("tensorflow", "a.keras"), ("onnx", "a.onnx")):
        capsys.readouterr()
        assert main(["predict", str(image), "--model", str(folder / model), "--out", str(tmp_path / runtime),
                     "--runtime", runtime, "--no-progress"]) == 0, capsys.readouterr().err
    a, b = (tifffile.imread(tmp_path / runtime / "image_mask.tif") > 0 for runtime in ("onnx", "tensorflow"))
    assert (dice(a, b) if a.any() or b.any() else 1.0) >= 0.999  # the parity bound of the tests above


def test_a_bundled_models_folder_runs_its_export(tmp_path, capsys):
    """A folder of one .keras file and its settings (the bundled model's) predicts with that
    file; export-onnx of the folder writes busi_unet2d.onnx beside it, but --runtime onnx
    looked for model_best.onnx and advised exporting the folder again, in a loop."""
    _needs_onnx()
    folder = tmp_path / "bundle"
    folder.mkdir()
    shutil.copyfile(BUNDLED / "busi_unet2d.keras", folder / "busi_unet2d.keras")
    _bundled_settings(folder)
    assert main(["export-onnx", str(folder)]) == 0 and (folder / "busi_unet2d.onnx").is_file()
    image = tmp_path / "image.tif"
    tifffile.imwrite(image, np.zeros((32, 32), np.uint8))
    capsys.readouterr()
    assert main(["predict", str(image), "--model", str(folder), "--out", str(tmp_path / "out"),
                 "--runtime", "onnx", "--no-progress"]) == 0, capsys.readouterr().err


def test_an_onnx_file_of_another_model_is_refused(busi_run, tmp_path, capsys):
    """The ONNX file beside a run was run with that run's settings whatever model it was
    exported from: after the run's model_best.keras was replaced (or an export copied
    into another run), --runtime onnx gave other masks than the Keras path, unsaid."""
    from bcseg.learn.models import unet

    run = tmp_path / "run"
    shutil.copytree(busi_run, run)
    other = unet(ndim=2, base_filters=2, depth=2, norm=None)
    other.save(run / "model_best.keras")  # another network of the same kind and recipe
    rundir.embed_settings(run / "model_best.keras", rundir.archive_settings(BUNDLED / "busi_unet2d.keras"))
    image = tmp_path / "image.tif"
    tifffile.imwrite(image, np.random.default_rng(0).integers(0, 255, (40, 40), dtype=np.uint8))
    assert main(["predict", str(image), "--model", str(run), "--out", str(tmp_path / "tf"),
                 "--no-progress"]) == 0  # the Keras path runs the new model
    capsys.readouterr()
    assert main(["predict", str(image), "--model", str(run), "--out", str(tmp_path / "out"),
                 "--runtime", "onnx", "--no-progress"]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{run / 'model_best.onnx'}: was exported from another model" in err[0], err
    assert "export-onnx" in err[0]
    assert not (tmp_path / "out").exists()


def _with_divisor(busi_run: Path, run: Path, divisor: str) -> Path:
    """A copy of the exported run whose ONNX file records ``divisor`` (hand-edited)."""
    import onnx

    shutil.copytree(busi_run, run)
    proto = onnx.load(str(run / "model_best.onnx"))
    next(e for e in proto.metadata_props if e.key == "bcseg.divisor").value = divisor
    onnx.save(proto, str(run / "model_best.onnx"))
    return run


def _refusal(run: Path, image: Path, out: Path, capsys) -> str:
    """The one error line of ``predict --runtime onnx`` refused with exit 4, no output left."""
    capsys.readouterr()
    assert main(["predict", str(image), "--model", str(run), "--out", str(out),
                 "--runtime", "onnx", "--no-progress"]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and not out.exists(), err
    return err[0]


@pytest.mark.parametrize("divisor", ["abc", "0", "1e9", "-16", ""])
def test_an_onnx_file_recording_no_usable_divisor_is_one_line_naming_it(divisor, busi_run, tmp_path,
                                                                        capsys):
    """'abc' and '1e9' failed with a bare ValueError, '0' with ZeroDivisionError (exit 1,
    naming no file); a negative divisor was taken."""
    run = _with_divisor(busi_run, tmp_path / "run", divisor)
    image = tmp_path / "image.tif"
    tifffile.imwrite(image, np.zeros((32, 32), np.uint8))
    line = _refusal(run, image, tmp_path / "out", capsys)
    assert f"{run / 'model_best.onnx'}: records the size divisor {divisor!r}" in line, line


def test_an_onnx_model_that_fails_on_a_batch_is_a_model_error_naming_it(busi_run, tmp_path, capsys):
    """Shipped without its .keras file, with a divisor too small for the network (1 for a
    U-Net that halves four times), whole 30-pixel slices reached ONNX Runtime, whose own
    error was printed raw and ended the run as an unexpected one (exit 1, naming no file)."""
    run = _with_divisor(busi_run, tmp_path / "run", "1")
    (run / "model_best.keras").unlink()
    settings = json.loads((run / "inference.json").read_text(encoding="utf-8"))
    (run / "inference.json").write_text(json.dumps({**settings, "input_size": None}), encoding="utf-8")
    image = tmp_path / "image.tif"
    tifffile.imwrite(image, np.random.default_rng(0).integers(0, 255, (30, 30), dtype=np.uint8))
    line = _refusal(run, image, tmp_path / "out", capsys)
    assert f"{run / 'model_best.onnx'}: cannot run on a batch of shape" in line, line
