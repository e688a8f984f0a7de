"""benchmarks/seed_ensemble.py: members must share their split (the folder it writes is
`bcseg ensemble`'s, tests/test_ensemble_cmd.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from bcseg import rundir
from bcseg.config import load_config, save_config
from bcseg.data import io
from bcseg.data.dataset import discover
from bcseg.infer.predict import segment_volume
from bcseg.infer.segment import load_models
from bcseg.learn.models import unet

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import seed_ensemble  # noqa: E402

TINY = {"model": {"base_filters": 2, "depth": 2}, "data": {"size": 16}}


def _member(folder: Path, seed: int, validation: list[str], test: list[str], recipe=TINY) -> Path:
    """A finished fold-0 run folder of member ``seed``: a tiny real model, its settings,
    config.toml and fold.json."""
    folder.mkdir(parents=True)
    keras.utils.set_random_seed(seed)
    unet(ndim=2, base_filters=2, depth=2, norm=None).save(folder / rundir.MODEL_FILE)
    cfg = load_config(None, {**recipe, "train": {**recipe.get("train", {}), "member_seed": seed}})
    save_config(cfg, folder / rundir.CONFIG_FILE)
    rundir.save_run_settings(folder, rundir.recipe_settings(cfg, 1))
    (folder / rundir.FOLD_FILE).write_text(json.dumps(
        {"fold": 0, "train": [], "validation": validation, "test": test}), encoding="utf-8")
    return folder


def test_members_with_another_validation_split_are_refused(tmp_path):
    a = _member(tmp_path / "a", 0, ["x", "y"], ["t"])
    b = _member(tmp_path / "b", 1, ["x", "z"], ["t"])
    with pytest.raises(SystemExit, match=r"b: its validation images differ"):
        seed_ensemble.shared_split([a, b])
    c = _member(tmp_path / "c", 2, ["y", "x"], ["t"])  # the same split in another order
    assert seed_ensemble.shared_split([a, c])["validation"] == ["x", "y"]


def test_one_model_twice_or_another_recipe_is_refused(tmp_path):
    a = _member(tmp_path / "a", 0, ["x"], ["t"])
    with pytest.raises(SystemExit, match=r"a: the same model as .*a"):
        seed_ensemble.shared_split([a, a])
    copy = _member(tmp_path / "copy", 0, ["x"], ["t"])  # member_seed 0 again: the same draws
    with pytest.raises(SystemExit, match=r"copy: the same model as"):
        seed_ensemble.shared_split([a, copy])
    longer = _member(tmp_path / "longer", 1, ["x"], ["t"], {**TINY, "train": {"epochs": 7}})
    with pytest.raises(SystemExit, match=r"longer: another recipe"):
        seed_ensemble.shared_split([a, longer])


def test_members_may_augment_differently_or_be_other_networks_even_with_one_seed(tmp_path):
    """r7 beside r10 (speckle strength drawn per image) share their split: one ensemble,
    and not one model twice although both train with member seed 0."""
    a = _member(tmp_path / "a", 0, ["x"], ["t"])
    speckled = _member(tmp_path / "speckled", 0, ["x"], ["t"], {**TINY, "augment": {"speckle_max": 0.35}})
    assert seed_ensemble.shared_split([a, speckled])["validation"] == ["x"]
    # or be another network (r12, instance normalisation, beside r10), seed 0 alike
    other = _member(tmp_path / "other", 0, ["x"], ["t"], {**TINY, "model": {"base_filters": 2, "norm": "instance"}})
    assert seed_ensemble.shared_split([a, other])["validation"] == ["x"]
    bigger = _member(tmp_path / "bigger", 1, ["x"], ["t"], {**TINY, "data": {"size": 32}})
    with pytest.raises(SystemExit, match=r"bigger: another recipe"):
        seed_ensemble.shared_split([a, bigger])


def test_a_bundled_ensemble_is_the_default_of_predict(tmp_path, phantom_root, monkeypatch, capsys):
    """Where the bundled folder's inference.json lists members, `bcseg predict` with no
    --model runs them all; `--init busi` keeps starting from busi_unet2d.keras."""
    import tifffile

    from bcseg import cli, pretrained

    cases = discover(phantom_root)
    runs = [_member(tmp_path / f"s{k}", k, [cases[0].id], [cases[2].id]) for k in (0, 1)]
    bundled = tmp_path / "pretrained"
    seed_ensemble.write_ensemble(bundled, runs, cases, load_config(None, TINY))
    (bundled / "member_0.keras").rename(bundled / pretrained.MODEL_NAME)  # the first member's name
    recorded = json.loads((bundled / rundir.SETTINGS_FILE).read_text(encoding="utf-8"))
    recorded["members"][0]["path"] = pretrained.MODEL_NAME
    (bundled / rundir.SETTINGS_FILE).write_text(json.dumps(recorded), encoding="utf-8")
    monkeypatch.setattr(pretrained, "FOLDER", bundled)
    assert pretrained.pretrained_path() == bundled / pretrained.MODEL_NAME

    image, out = cases[2].image, tmp_path / "predicted"
    assert cli.main(["predict", str(image), "--out", str(out), "--save-prob", "--no-progress"]) == 0
    assert "bundled BUSI ensemble (busi_unet2d.keras, member_1.keras)" in capsys.readouterr().out
    prob = tifffile.imread(out / f"{io.file_stem(image)}_prob.tif")
    models, settings = load_models(bundled)
    np.testing.assert_allclose(prob, segment_volume(models, io.read_image(image)[0], settings)[1],
                               atol=1e-6)
    assert len(models) == 2


def test_bundle_ensemble_records_only_runs_that_saw_every_image(tmp_path, phantom_root, capsys):
    """build_pretrained.py --ensemble: a run that held a test fold out is refused (the
    bundle's record says its models saw every image); runs of all images are bundled,
    TTA kept off with --no-tta at the threshold tuned without it; members of an
    earlier, larger bundle left beside it are refused rather than left unlisted."""
    import build_pretrained

    cases = discover(phantom_root)
    held_out = [_member(tmp_path / f"h{k}", k, [cases[0].id], [cases[2].id]) for k in (0, 1)]
    with pytest.raises(SystemExit, match=r"^build_pretrained.py: .*h0: held 1 test images out"):
        build_pretrained.bundle_ensemble(held_out, phantom_root, tmp_path / "b0")
    assert not (tmp_path / "b0").exists()
    # ... unless it is bundled as a held-out twin, which says what it never saw, and
    # never into the package's own folder.
    with pytest.raises(SystemExit, match=r"bundled beside the package's model"):
        build_pretrained.bundle_ensemble(held_out, phantom_root, build_pretrained.TARGET, heldout=True)
    twin = tmp_path / "twin"
    build_pretrained.bundle_ensemble(held_out, phantom_root, twin, tta=False, heldout=True)
    recorded = rundir.read_settings(twin / rundir.SETTINGS_FILE)
    assert recorded.info["trained_on"].endswith("the 1 images of fold 0 were never seen")
    assert len(load_models(twin)[0]) == 2
    # students say what they learnt from: their teacher saw what they were tested on
    taught = {**TINY, "train": {"teacher": [str(tmp_path / "teacher")]}}
    students = [_member(tmp_path / f"t{k}", k, [cases[0].id], [cases[2].id], taught) for k in (0, 1)]
    build_pretrained.bundle_ensemble(students, phantom_root, tmp_path / "twin2", tta=False, heldout=True)
    recorded = rundir.read_settings(tmp_path / "twin2" / rundir.SETTINGS_FILE)
    assert recorded.info["trained_on"].endswith(
        f"were never seen; distilled from {tmp_path / 'teacher'}"), recorded.info["trained_on"]

    runs = [_member(tmp_path / f"s{k}", k, [cases[0].id, cases[1].id], []) for k in (0, 1)]
    target = tmp_path / "bundle"
    files = build_pretrained.bundle_ensemble(runs, phantom_root, target, tta=False)
    assert [f.name for f in files] == ["busi_unet2d.keras", "busi_unet2d_2.keras"]
    recorded = rundir.read_settings(target / rundir.SETTINGS_FILE)
    off = recorded.tuned["without_tta"]
    assert not recorded.tta and recorded.threshold == off["threshold"]
    assert recorded.info["trained_on"].startswith("all 2 BUSI benign/malignant images")
    models, _ = load_models(target)
    assert len(models) == 2

    (target / "busi_unet2d_3.keras").write_bytes(files[1].read_bytes())  # an earlier bundle's third
    with pytest.raises(SystemExit, match=r"busi_unet2d_3.keras of an earlier ensemble"):
        build_pretrained.bundle_ensemble(runs, phantom_root, target)


def test_from_run_says_what_a_run_saw_and_keeps_tta_off_when_asked(tmp_path, phantom_root):
    """build_pretrained.py --from-run of an --all run (no test images) said "the 0
    images of fold 0 were never seen"; it says all were seen now, and --no-tta takes the
    threshold tuned without TTA, as --ensemble does."""
    import build_pretrained

    cases = discover(phantom_root)
    every = _member(tmp_path / "all", 0, [cases[0].id], [])
    settings = rundir.read_settings(every / rundir.SETTINGS_FILE).replace(
        tta=True, threshold=0.4, tuned={"with_tta": {"threshold": 0.4, "postprocess": [], "validation_dice": 0.8},
                                        "without_tta": {"threshold": 0.6, "postprocess": ["largest"],
                                                        "validation_dice": 0.7}})
    rundir.write_settings(every, settings)
    assert build_pretrained.main(["--from-run", str(every), "--target", str(tmp_path / "b"), "--no-tta"]) == 0
    recorded = rundir.read_settings(tmp_path / "b" / rundir.SETTINGS_FILE)
    assert recorded.info["trained_on"].startswith("all 1 BUSI benign/malignant images (0 training, 1 validation)")
    assert (recorded.tta, recorded.threshold, recorded.postprocess) == (False, 0.6, ("largest",))
    held = _member(tmp_path / "held", 1, [cases[0].id], [cases[1].id])
    assert build_pretrained.main(["--from-run", str(held), "--target", str(tmp_path / "t")]) == 0
    assert rundir.read_settings(tmp_path / "t" / rundir.SETTINGS_FILE).info["trained_on"].endswith(
        "the 1 images of fold 0 were never seen")


def test_no_tta_without_a_setting_tuned_without_it_is_refused(tmp_path, phantom_root):
    """--no-tta on a run that recorded only its TTA choice bundled it with TTA on, or
    crashed (KeyError) where `tuned` lacked the alternative: refused, in words."""
    import build_pretrained

    cases = discover(phantom_root)
    run = _member(tmp_path / "all", 0, [cases[0].id], [])
    rundir.write_settings(run, rundir.read_settings(run / rundir.SETTINGS_FILE).replace(
        tta=True, tuned={"with_tta": {"threshold": 0.4, "postprocess": [], "validation_dice": 0.8}}))
    with pytest.raises(SystemExit, match="recorded no setting tuned without TTA"):
        build_pretrained.main(["--from-run", str(run), "--target", str(tmp_path / "b"), "--no-tta"])
    assert not (tmp_path / "b").exists()


def test_a_bundled_run_is_loaded_with_the_settings_written_beside_it(tmp_path):
    """build_pretrained.py re-saves the run's model for inference and carried the run's
    weights digest into the bundle's inference.json: the bundle was refused as a model
    "replaced" since its settings were tuned. The digest recorded is the bundled file's."""
    import build_pretrained  # benchmarks/build_pretrained.py

    run = _member(tmp_path / "run", 0, ["x"], [])
    model = keras.saving.load_model(run / rundir.MODEL_FILE)
    model.compile(optimizer="adam", loss="mse")  # as train saves it: the optimiser's state inside
    model.optimizer.build(model.trainable_variables)
    model.save(run / rundir.MODEL_FILE)
    rundir.save_run_settings(run, rundir.read_settings(run / rundir.SETTINGS_FILE))
    assert rundir.read_settings(run / rundir.SETTINGS_FILE).info.get(rundir.WEIGHTS_KEY)
    path = build_pretrained.bundle(run, "all of it", target=tmp_path / "bundle")
    files, settings = rundir.load_run(tmp_path / "bundle")
    assert files == [path] and settings.info["trained_on"] == "all of it"
    assert settings.info[rundir.WEIGHTS_KEY] == rundir.weights_digest(path)
