"""The bundled BUSI model loads, predicts, and segments BUSI images.

The bundled model was trained on all 647 BUSI lesion images (its inference.json
says so), so no BUSI lesion image is unseen by it. Generalisation is checked on its
held-out twin in tests/data/busi_heldout: the same recipe trained on folds 1-4 of
folds.csv only (the fold-0 CPU benchmark run), so fold-0 images are unseen there.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image
import pytest

from bcseg.data import io
from bcseg.config import load_config
from bcseg.measure.metrics import dice
from bcseg.pretrained import CITATION, pretrained_info, pretrained_path
from bcseg.rundir import archive_settings

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
HELDOUT = Path(__file__).parent / "data" / "busi_heldout"


def _bundled_files() -> list[Path]:
    """The bundled model files: the ensemble's members, or the one model."""
    members = pretrained_info().get("members") or [{"path": pretrained_path().name}]
    return [pretrained_path().parent / m["path"] for m in members]


def test_bundled_model_is_small_and_cites_busi():
    files = _bundled_files()
    assert files[0] == pretrained_path()  # --init busi starts from the first member
    assert all(f.stat().st_size < 10e6 for f in files)
    assert sum(f.stat().st_size for f in files) <= 25e6  # issue 18's bound for the bundle
    info = pretrained_info()
    assert info["citation"] == CITATION and "10.1016/j.dib.2019.104863" in CITATION
    assert info["trained_on"].startswith("all 647 BUSI")
    # Built with today's busi recipe, so fine-tuning from it (--init busi) matches.
    for f in files:
        own = archive_settings(f)
        assert own.input_size == load_config("busi")["data"]["size"]
        assert own.info["trained_on"] == info["trained_on"]
    assert 0 < info["threshold"] < 1


def test_heldout_twin_never_saw_fold0():
    info = json.loads((HELDOUT / "inference.json").read_text())
    assert "the 130 images of fold 0 were never seen" in info["trained_on"]
    # the bundled recipe's twin: r13 on folds 1-4, not distilled. The bundle's teacher was
    # the r13 fold models 1-4, each of which saw fold 0, so no student of theirs is a twin.
    assert info["source_run"] == "bench-out/r13f0/fold_0" and "distilled" not in info["trained_on"]
    assert pretrained_info()["trained_on"].endswith("bench-out/r13f4/fold_4")
    assert sorted(p.name for p in HELDOUT.glob("*.keras")) == [p.name for p in _bundled_files()]
    assert archive_settings(HELDOUT / "busi_unet2d.keras").input_size == archive_settings(pretrained_path()).input_size


def test_bundled_model_loads_safely_and_predicts_any_size():
    from bcseg.infer.predict import load_model, predict_volume

    model = load_model(pretrained_path())
    image = np.random.default_rng(0).integers(0, 255, (77, 131), dtype=np.uint8)
    mask, prob = predict_volume(model, image, input_size=128)
    assert mask.shape == image.shape and prob.dtype == np.float32
    assert 0 <= prob.min() and prob.max() <= 1


def _first_fold0_lesions(busi_root, n=3):
    with open(busi_root / "folds.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle)
                if r["fold"] == "0" and r["class"] in ("benign", "malignant")]
    return rows[:n]  # the first in the file's order: no picking of easy cases


def _dice_on_fold0(busi_root, tmp_path, model_args):
    from bcseg.cli import main
    from bcseg.data.cases import read_case_masks
    from bcseg.data.dataset import BUSI_OBSERVER, discover

    rows = _first_fold0_lesions(busi_root)
    inputs = [str(busi_root / r["image"]) for r in rows]
    assert main(["predict", *inputs, "--out", str(tmp_path), *model_args]) == 0
    cases = {c.image.resolve(): c for c in discover(busi_root)}
    scores = []
    for image in inputs:
        case = cases[Path(image).resolve()]
        predicted = io.read_mask(tmp_path / f"{io.file_stem(image)}_mask.tif")
        truth = read_case_masks(case)[BUSI_OBSERVER]  # several mask files: OR-merged
        scores.append(dice(predicted, truth))
    print("Dice on", [r["image"] for r in rows], scores)
    return scores


def test_heldout_twin_segments_unseen_busi_images(busi_root, tmp_path):
    scores = _dice_on_fold0(busi_root, tmp_path, ["--model", str(HELDOUT)])
    assert np.mean(scores) > 0.6, scores


def test_bundled_model_is_the_default_and_segments_busi(busi_root, tmp_path):
    # These images were in the bundled model's training set: this checks that
    # `predict` without --model finds, loads and applies it, not generalisation.
    scores = _dice_on_fold0(busi_root, tmp_path, [])
    assert np.mean(scores) > 0.6, scores


@pytest.mark.parametrize("damage", ["truncated", "a list", "member files without it"])
def test_a_damaged_bundled_folder_is_one_line_naming_the_file(tmp_path, monkeypatch, capsys, damage):
    import shutil

    from bcseg import pretrained
    from bcseg.cli import main

    folder = tmp_path / "pretrained"
    folder.mkdir()
    shutil.copyfile(pretrained_path(), folder / "busi_unet2d.keras")
    sidecar = folder / "inference.json"
    if damage == "truncated":
        sidecar.write_text('{"threshold": 0.5, "postp', encoding="utf-8")
    elif damage == "a list":
        sidecar.write_text("[1, 2]", encoding="utf-8")
    else:  # a second member, and no inference.json to say the two form the default
        shutil.copyfile(pretrained_path(), folder / "busi_unet2d_2.keras")
    monkeypatch.setattr(pretrained, "FOLDER", folder)
    image = tmp_path / "scan.png"
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(image)
    assert main(["predict", str(image), "--out", str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"bcseg: error: {sidecar}") and "Error:" not in err[0]
    assert not (tmp_path / "out").exists()


def test_the_busi_preset_is_the_bundled_models_recipe():
    """--init busi fine-tunes the bundled model with the busi preset: it must be the
    recipe the bundled model was trained with (r13, trained for 100 epochs; the bundle
    is an r13 student, the same network and augmentation), not an older one."""
    recipe = Path(__file__).resolve().parents[1] / "benchmarks" / "configs" / "r13.toml"
    assert pretrained_info()["source_run"] == "bench-out/busi-all-student-r13"
    assert load_config("busi") == load_config(recipe)
