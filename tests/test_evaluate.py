"""Evaluation per specimen against each observer, on phantom stacks written to disk."""

from __future__ import annotations

import csv
import json
import math
import shutil
import warnings

import numpy as np
import pytest
import tifffile

from bcseg.data import io
from bcseg.data.cases import Case, read_case_channels, read_case_image, read_case_masks
from bcseg.data.dataset import discover
from bcseg.errors import DataError, UsageError
from bcseg.measure.evaluate import (METRIC_COLUMNS, NUMERIC_METRICS, ceiling_table, evaluate,
                            find_predictions)
from bcseg.measure.metrics import case_metrics, pixel_soft_score, slice_metrics, summarise
from bcseg.measure.observers import agreement, consensus, union
from bcseg.data.phantom import write_phantom

SHAPE = (16, 40, 40)  # small, and valid for the phantom before and after its fix for short stacks
N_BOOT = 300
REFERENCES = ("observer1", "observer2", "union", "intersection", "staple")


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Three phantom specimens; predictions: observer1 itself, empty, observer2 + a stripe."""
    root = tmp_path_factory.mktemp("study")
    write_phantom(root / "data", n=3, shape=SHAPE)
    cases = discover(root / "data")
    masks = [read_case_masks(c) for c in cases]
    preds = [masks[0]["observer1"].copy(), np.zeros(SHAPE, bool), masks[2]["observer2"].copy()]
    preds[2][:, :4, :] = True  # a false-positive stripe along the top rows of every slice
    spacing = read_case_image(cases[0])[1]
    for case, pred in zip(cases, preds):
        io.write_mask(root / "pred" / f"{case.id}_mask.tif", pred, spacing)
    prob = np.where(preds[0], 0.9, 0.05).astype(np.float32)
    io.write_probability(root / "pred" / f"{cases[0].id}_prob.tif", prob, spacing)
    result = evaluate(root / "pred", root / "data", root / "eval", n_boot=N_BOOT, seed=3)
    return {"root": root, "cases": cases, "masks": masks, "preds": preds, "prob": prob,
            "spacing": spacing, "result": result, "out": root / "eval"}


def test_metrics_csv_matches_case_metrics(study):
    rows = read_rows(study["out"] / "metrics.csv")
    assert list(rows[0])[:4] == ["case", "reference", "level", "slice"]
    assert tuple(list(rows[0])[4:]) == METRIC_COLUMNS
    specimen = [r for r in rows if r["level"] == "specimen"]
    assert len(specimen) == 3 * len(REFERENCES)
    for case, masks, pred in zip(study["cases"], study["masks"], study["preds"]):
        for ref in REFERENCES:
            (row,) = [r for r in specimen if r["case"] == case.id and r["reference"] == ref]
            expected = case_metrics(pred, consensus(masks, ref), study["spacing"])
            for key in NUMERIC_METRICS:
                assert same(float(row[key]), expected[key]), (case.id, ref, key)
            assert row["unit"] == "mm" and row["slice"] == ""
            assert row["pred_empty"] == str(expected["pred_empty"])
    # Hand-checked: the prediction that is observer1's mask, and the empty one.
    first = {r["reference"]: r for r in specimen if r["case"] == study["cases"][0].id}
    assert float(first["observer1"]["dice"]) == 1.0 and float(first["observer1"]["hd95"]) == 0.0
    empty = [r for r in specimen if r["case"] == study["cases"][1].id]
    assert all(float(r["dice"]) == 0.0 and math.isinf(float(r["hd95"])) for r in empty)
    t, p = study["masks"][2]["observer2"], study["preds"][2]
    hand = 2 * np.count_nonzero(t & p) / (np.count_nonzero(t) + np.count_nonzero(p))
    (third,) = [r for r in specimen if r["case"] == study["cases"][2].id and r["reference"] == "observer2"]
    assert float(third["dice"]) == pytest.approx(hand, abs=1e-15)


def test_slice_rows_match_slice_metrics(study):
    rows = [r for r in read_rows(study["out"] / "metrics.csv") if r["level"] == "slice"]
    assert len(rows) == 3 * len(REFERENCES) * SHAPE[0]
    case = study["cases"][2]
    got = [r for r in rows if r["case"] == case.id and r["reference"] == "union"]
    expected = slice_metrics(study["preds"][2], union(list(study["masks"][2].values())), study["spacing"])
    assert [int(r["slice"]) for r in got] == list(range(SHAPE[0]))
    for row, exp in zip(got, expected):
        assert all(same(float(row[k]), exp[k]) for k in NUMERIC_METRICS)


def test_agreement_csv_matches_observers_agreement(study):
    rows = read_rows(study["out"] / "agreement.csv")
    assert len(rows) == 3
    for row, case, masks in zip(rows, study["cases"], study["masks"]):
        (expected,) = agreement(masks, study["spacing"])
        assert (row["case"], row["level"], row["observer_a"], row["observer_b"]) == \
            (case.id, "specimen", "observer1", "observer2")
        assert all(same(float(row[k]), expected[k]) for k in NUMERIC_METRICS)


def test_summary_is_over_cases_not_slices(study):
    summary = json.loads((study["out"] / "summary.json").read_text())
    assert summary["n_cases"] == 3 and summary["level"] == "specimen" and summary["unit"] == "mm"
    assert list(summary["references"]) == [*REFERENCES, "inter-observer"]
    rows = [r for r in read_rows(study["out"] / "metrics.csv") if r["level"] == "specimen"]
    for ref in REFERENCES:
        values = [float(r["dice"]) for r in rows if r["reference"] == ref]
        stats = summary["references"][ref]["metrics"]["dice"]
        assert stats["n"] == 3  # cases; there are 48 slices
        expected = summarise(values, n_boot=N_BOOT, seed=3)  # 3 cases: no CI, written as null
        assert stats == pytest.approx({k: None if isinstance(v, float) and math.isnan(v) else v
                                       for k, v in expected.items()})
        assert stats["ci_note"] == "n too small"
    obs1 = summary["references"]["observer1"]["metrics"]
    d2 = float(next(r["dice"] for r in rows if r["case"] == study["cases"][2].id
                    and r["reference"] == "observer1"))
    assert obs1["dice"]["mean"] == pytest.approx((1.0 + 0.0 + d2) / 3)
    assert obs1["hd95"]["n_inf"] == 1 and obs1["hd95"]["n_finite"] == 2
    assert summary["references"]["observer1"]["n_pred_empty"] == 1
    inter = [agreement(m, study["spacing"])[0]["dice"] for m in study["masks"]]
    assert summary["references"]["inter-observer"]["metrics"]["dice"]["mean"] == pytest.approx(np.mean(inter))


def test_pixel_soft_score_is_reported_beside_true_dice(study):
    summary = json.loads((study["out"] / "summary.json").read_text())
    soft = summary["pixel_soft_score"]
    probs = [study["prob"], *(p.astype(float) for p in study["preds"][1:])]
    unions = [union(list(m.values())) for m in study["masks"]]
    # The study's reading: one score per image row, pooled over every row of every case.
    rows = [u.size // u.shape[-1] for u in unions]
    pooled = sum(pixel_soft_score(u, p) * n for u, p, n in zip(unions, probs, rows)) / sum(rows)
    assert soft["value"] == pytest.approx(pooled, rel=1e-12)
    assert soft["reference"] == "union" and soft["n_cases_with_probability"] == 1
    assert soft["dice_mean"] == pytest.approx(summary["references"]["union"]["metrics"]["dice"]["mean"])
    assert (soft["reduction"], soft["eps"]) == ("row", 1e-7)
    assert soft["value"] != pytest.approx(soft["dice_mean"])  # why it must never be called Dice
    assert "not the dice" in soft["note"].lower()


def test_ceiling_table_and_return_value(study):
    summary = json.loads((study["out"] / "summary.json").read_text())
    table = ceiling_table(summary)
    assert [r["comparison"] for r in table] == [
        "model vs observer1", "model vs observer2", "model vs union", "model vs intersection",
        "model vs STAPLE", "observer1 vs observer2 (ceiling)"]
    assert [r["is_ceiling"] for r in table] == [False] * 5 + [True]
    dice = summary["references"]["observer1"]["metrics"]["dice"]
    assert table[0]["dice"] == f"{dice['mean']:.3f} ± {dice['sd']:.3f}"
    # Three cases: no bootstrap CI; the HD95 mean says it stands on 2 cases.
    assert table[0]["dice_ci"] == "n too small" and math.isnan(dice["ci_low"] or math.nan)
    assert table[0]["hd95"].endswith("mm (mean of 2; 1 inf left out)") and table[0]["n"] == 3
    assert ceiling_table(study["out"] / "summary.json") == table
    result = study["result"]
    assert result["n_cases"] == 3 and result["metrics_csv"].is_file()
    assert result["headline"]["reference"] == "union"
    assert result["dice"]["observer1"] == pytest.approx(dice["mean"])


def test_existing_outputs_are_refused_without_force(study, tmp_path):
    root = study["root"]
    with pytest.raises(UsageError, match="already exists"):
        evaluate(root / "pred", root / "data", study["out"], n_boot=10)
    out = tmp_path / "again"
    out.mkdir()
    (out / "summary.json").write_text("{}")  # not bcseg's: even --force leaves it alone
    with pytest.raises(UsageError, match="not written by bcseg"):
        evaluate(root / "pred", study["cases"], out, force=True, n_boot=10)
    assert (out / "summary.json").read_text() == "{}"
    (out / "summary.json").unlink()
    evaluate(root / "pred", study["cases"], out, n_boot=10)
    result = evaluate(root / "pred", study["cases"], out, force=True, slices=False, n_boot=10,
                      targets=("each",))
    assert json.loads(result["summary_json"].read_text())["n_cases"] == 3
    assert {r["level"] for r in read_rows(out / "metrics.csv")} == {"specimen"}
    assert not list(out.glob(".*partial*"))


def test_mismatches_are_listed_in_one_error(study, tmp_path):
    root, cases = study["root"], study["cases"]
    pred = tmp_path / "pred"
    io.write_mask(pred / "ghost_a_mask.tif", np.zeros(SHAPE, bool))
    io.write_mask(pred / "ghost_b_mask.tif", np.zeros(SHAPE, bool))
    io.write_mask(pred / f"{cases[0].id}_mask.tif", np.zeros((SHAPE[0], 40, 41), bool))
    io.write_mask(pred / f"{cases[1].id}_mask.tif", np.zeros(SHAPE, bool))  # fine
    with pytest.raises(DataError) as info:
        evaluate(pred, root / "data", tmp_path / "out")
    message = str(info.value)
    assert "3 problem(s)" in message
    assert "ghost_a" in message and "ghost_b" in message and cases[0].id in message
    assert "(16, 40, 41)" in message
    assert not (tmp_path / "out").exists()


def test_shape_mismatch_alone(study, tmp_path):
    case = study["cases"][2]
    io.write_mask(tmp_path / "pred" / f"{case.id}_mask.tif", np.zeros((15, 40, 40), bool))
    with pytest.raises(DataError, match=r"shape \(15, 40, 40\) differs"):
        evaluate(tmp_path / "pred", study["cases"], tmp_path / "out")


def test_prediction_files_are_checked(tmp_path):
    with pytest.raises(DataError, match="holds no predictions"):
        find_predictions(tmp_path)
    io.write_probability(tmp_path / "a_prob.tif", np.zeros((4, 4)))
    io.write_mask(tmp_path / "b_mask.tif", np.zeros((4, 4)))
    io.write_mask(tmp_path / "b_mask.nii.gz", np.zeros((4, 4)))
    with pytest.raises(DataError) as info:
        find_predictions(tmp_path)
    assert "a_mask" in str(info.value) and "b_mask.nii.gz" in str(info.value)


def test_bad_arguments(study, tmp_path):
    root = study["root"]
    with pytest.raises(UsageError, match="unknown target"):
        evaluate(root / "pred", study["cases"], tmp_path, targets=("mean",))
    with pytest.raises(UsageError, match="unknown observer"):
        evaluate(root / "pred", study["cases"], tmp_path, observers=["observer9"])


def test_one_observer_selected(study, tmp_path):
    result = evaluate(study["root"] / "pred", study["cases"], tmp_path, observers=["observer1"],
                      slices=False, n_boot=10)
    summary = json.loads(result["summary_json"].read_text())
    assert list(summary["references"]) == ["observer1"]  # no consensus, no ceiling of one
    assert read_rows(tmp_path / "agreement.csv") == []
    assert summary["pixel_soft_score"]["reference"] == "observer1"


def rect(shape, rows, cols):
    m = np.zeros(shape, bool)
    m[rows[0]:rows[1], cols[0]:cols[1]] = True
    return m


def image_cases(root, shape, observers, spacings=(None, None)) -> list[Case]:
    """Cases a and b: a blank 2D image each, observer name -> (rows, cols) of its rectangle."""
    cases = []
    for name, spacing in zip(("a", "b"), spacings):
        image = io.write_image(root / "images" / f"{name}.tif", np.zeros(shape, np.uint8), spacing)
        masks = {observer: (io.write_mask(root / observer / f"{name}.tif", rect(shape, *box), spacing),)
                 for observer, box in observers.items()}
        cases.append(Case(name, image, masks))
    return cases


def test_2d_images_without_spacing_warn_once_and_use_voxels(tmp_path):
    shape = (20, 20)
    cases = image_cases(tmp_path, shape, {"observer1": ((4, 8), (4, 8)), "observer2": ((4, 8), (6, 10))})
    # a: 4x4 square two rows lower than observer1's: overlap 2x4 -> Dice 2*8/32 = 0.5
    io.write_mask(tmp_path / "pred" / "a_mask.tif", rect(shape, (6, 10), (4, 8)))
    io.write_mask(tmp_path / "pred" / "b_mask.tif", rect(shape, (4, 8), (4, 8)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = evaluate(tmp_path / "pred", cases, tmp_path / "out", n_boot=50)
    spacing_warnings = [w for w in caught if "spacing" in str(w.message)]
    assert len(spacing_warnings) == 1 and "voxels" in str(spacing_warnings[0].message)
    rows = read_rows(tmp_path / "out" / "metrics.csv")
    assert {r["level"] for r in rows} == {"image"} and {r["unit"] for r in rows} == {"voxel"}
    dice = {(r["case"], r["reference"]): float(r["dice"]) for r in rows}
    assert dice[("a", "observer1")] == 0.5 and dice[("b", "observer1")] == 1.0
    assert dice[("b", "observer2")] == 0.5  # overlap 4 rows x 2 columns: 2*8 / (16 + 16)
    assert dice[("b", "intersection")] == pytest.approx(2 * 8 / (16 + 8))  # the overlap is 8 pixels
    summary = json.loads(result["summary_json"].read_text())
    assert summary["level"] == "image" and summary["unit"] == "voxel"
    assert summary["references"]["observer1"]["metrics"]["dice"]["mean"] == 0.75
    assert summary["references"]["inter-observer"]["metrics"]["dice"]["mean"] == 0.5


def test_paired_human_level_test_comes_first(study):
    summary = json.loads((study["out"] / "summary.json").read_text())
    assert next(iter(summary)) == "human_level"
    comparisons = summary["human_level"]["comparisons"]
    assert [(c["reference"], c["other"], c["metric"]) for c in comparisons] == [
        ("observer1", "observer2", "dice"), ("observer1", "observer2", "hd95"),
        ("observer2", "observer1", "dice"), ("observer2", "observer1", "hd95")]
    rows = [r for r in read_rows(study["out"] / "metrics.csv") if r["level"] == "specimen"]
    inter = [agreement(m, study["spacing"])[0] for m in study["masks"]]
    for c in comparisons:
        model = [float(r[c["metric"]]) for r in rows if r["reference"] == c["reference"]]
        human = [row[c["metric"]] for row in inter]
        # Dice(model, A) - Dice(B, A) per specimen; the empty prediction's HD95 is inf, left out.
        finite = [m - h for m, h in zip(model, human) if math.isfinite(m) and math.isfinite(h)]
        assert c["delta"]["mean"] == pytest.approx(np.mean(finite))
        assert c["n_left_out"] == 3 - len(finite)
        assert c["verdict"] == "too_few"  # three specimens cannot tell
    assert comparisons[1]["n_left_out"] == 1 and comparisons[1]["unit"] == "mm"
    from bcseg.measure.evaluate import headline_lines
    lines = headline_lines(study["result"])
    assert lines[0].startswith("human level: model too few specimens to tell whether it agrees with "
                               "observer1 as well as observer2 does (Δ Dice")
    assert len([line for line in lines if line.startswith("human level")]) == 4


def test_few_cases_get_no_ci_and_inf_means_say_so(study):
    from bcseg.measure.evaluate import headline_lines

    lines = headline_lines(study["result"])
    dice_line = next(line for line in lines if line.startswith("test Dice vs union"))
    assert "(no CI: n too small)" in dice_line and "95% CI" not in dice_line
    hd95 = study["result"]["headline"]["hd95"]
    assert (hd95["n_finite"], hd95["n_inf"]) == (2, 1)  # the empty prediction: inf
    assert f"test HD95 vs union: {hd95['mean']:.2f} mm (mean of 2; 1 inf left out)" in lines
    table = ceiling_table(json.loads((study["out"] / "summary.json").read_text()))
    assert all(row["dice_ci"] == "n too small" for row in table)


# --------------------------------------------------------------------------- channels

def _as_hyperstacks(source, root):
    """The two-channel phantom again as one ImageJ hyperstack (ZCYX) per case."""
    for case in discover(source):
        array, spacing, names = read_case_channels(case)
        path = root / "images" / f"{case.id}.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(path, np.moveaxis(array, -1, 1).astype(np.float32), imagej=True,
                         metadata={"axes": "ZCYX", "unit": "mm", "spacing": spacing[0]},
                         resolution=(1 / spacing[2], 1 / spacing[1]))
        for observer, files in case.masks.items():
            io.write_mask(root / "masks" / observer / f"{case.id}.tif", io.read_mask(files[0]), spacing)
    (root / "channels.json").write_text(json.dumps(names))
    return root


def test_two_channel_cases_are_scored_on_their_masks(two_channel_root, tmp_path):
    # Channel folders (images/us/, images/pa/) and one file with a C axis per case:
    # both are scored on the masks alone, so the rows are those of case_metrics.
    cases = discover(two_channel_root)
    preds = {}
    for case in cases:
        masks = read_case_masks(case)
        preds[case.id] = masks["observer1"].copy()
        preds[case.id][:, :3, :] = True
        io.write_mask(tmp_path / "pred" / f"{case.id}_mask.tif", preds[case.id], read_case_image(case)[1])
    stacked = _as_hyperstacks(two_channel_root, tmp_path / "stacked")
    assert [c.channels[1].index for c in discover(stacked)] == [1] * len(cases)
    rows = {}
    for layout, data in (("folders", two_channel_root), ("hyperstack", stacked)):
        evaluate(tmp_path / "pred", data, tmp_path / layout, n_boot=N_BOOT)
        rows[layout] = read_rows(tmp_path / layout / "metrics.csv")
        summary = json.loads((tmp_path / layout / "summary.json").read_text())
        recorded = summary["inputs"]["cases"][0]["channels"]
        assert [c["name"] for c in recorded] == ["us", "pa"]
        assert [c["index"] for c in recorded] == ([None, None] if layout == "folders" else [0, 1])
    assert rows["folders"] == rows["hyperstack"]
    case = cases[0]
    (row,) = [r for r in rows["hyperstack"] if r["case"] == case.id and r["reference"] == "observer2"
              and r["level"] == "specimen"]
    expected = case_metrics(preds[case.id], read_case_masks(case)["observer2"], read_case_image(case)[1])
    assert float(row["dice"]) == expected["dice"] and float(row["hd95"]) == expected["hd95"]


def test_cases_left_without_a_prediction_are_counted_and_named(study, tmp_path):
    """Two of three scored and nothing said: the study shrank unseen (red-team pass 4)."""
    cases, root = study["cases"], study["root"]
    (tmp_path / "pred").mkdir()
    for case in cases[:2]:
        shutil.copy(root / "pred" / f"{case.id}_mask.tif", tmp_path / "pred")
    with pytest.warns(UserWarning, match=rf"2 of the dataset's 3 case\(s\) have a prediction and are "
                                         rf"scored; 1 are left out \(e.g. {cases[2].id}\)"):
        evaluate(tmp_path / "pred", root / "data", tmp_path / "out", n_boot=N_BOOT)
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["n_cases"] == 2


def test_a_misspelt_prediction_suffix_is_refused_not_ignored(study, tmp_path):
    case = study["cases"][0]
    io.write_mask(tmp_path / "pred" / f"{case.id}_Mask.tif", np.zeros(SHAPE, bool))
    io.write_mask(tmp_path / "pred" / f"{study['cases'][1].id}_mask.tif", np.zeros(SHAPE, bool))
    with pytest.raises(DataError, match=rf"{case.id}_Mask.tif: ends in '_Mask', not '_mask'"):
        find_predictions(tmp_path / "pred")


def test_an_observers_mask_is_not_taken_for_a_prediction(tmp_path):
    """--pred at a BUSI class folder: each 'prediction' was scored against itself (Dice 1)."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for name in ("benign", "malignant"):
        for k in (1, 2):
            mask = np.zeros((40, 50), np.uint8)
            mask[10:20, 10:30] = 255
            (tmp_path / "busi" / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (40, 50), dtype=np.uint8)).save(
                tmp_path / "busi" / name / f"{name} ({k}).png")
            Image.fromarray(mask).save(tmp_path / "busi" / name / f"{name} ({k})_mask.png")
    with pytest.raises(DataError, match=r"benign \(1\)_mask.png: is observer \w+'s mask of case "
                                        r"'benign \(1\)' in the dataset, not a prediction"):
        evaluate(tmp_path / "busi" / "benign", tmp_path / "busi", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_stop_while_the_report_is_drawn_says_the_evaluation_is_whole(study, tmp_path, capsys,
                                                                        monkeypatch):
    """Ctrl-C while the figures are drawn left the numbers written and no page, and said
    only "interrupted": the user could not tell the evaluation from a half one (a rerun
    is refused: its outputs exist). The line now says which it is and how to finish."""
    from bcseg.cli import main
    from bcseg.report import html

    def stopped(folder):
        raise KeyboardInterrupt

    out = tmp_path / "eval"
    argv = ["evaluate", "--pred", str(study["root"] / "pred"), "--truth", str(study["root"] / "data"),
            "--out", str(out)]
    with monkeypatch.context() as patch:
        patch.setattr(html, "build_report", stopped)
        code = main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 130 and len(lines) == 1
    assert lines[0] == (f"bcseg: error: interrupted; {out}: the evaluation is written, its report is "
                        f"not; 'bcseg report {out}' draws it")
    assert (out / "summary.json").is_file() and not (out / "report.html").exists()
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").is_file()


def test_masks_of_different_models_in_one_folder_are_said_to_be_so(tmp_path):
    """Two cases segmented by two models into one folder were scored as one model's
    result without a word; each mask records its model, so evaluate says so."""
    import keras

    from bcseg.cli import main
    from bcseg.learn.models import unet
    from bcseg.rundir import InferenceSettings, embed_settings

    write_phantom(tmp_path / "data", n=2, shape=SHAPE)
    images = sorted((tmp_path / "data" / "images").iterdir())
    for seed, image in enumerate(images):
        keras.utils.set_random_seed(seed)
        model = tmp_path / f"m{seed}.keras"
        unet(ndim=2, in_channels=1, base_filters=4, depth=2).save(model)
        embed_settings(model, InferenceSettings(ndim=2))
        assert main(["predict", str(image), "--model", str(model), "--out", str(tmp_path / "seg"),
                     "--no-progress"]) == 0
    with pytest.warns(UserWarning, match=r"made by 2 different models or settings \(case specimen_000 by "
                      r"one, specimen_001 by another\)"):
        evaluate(tmp_path / "seg", tmp_path / "data", tmp_path / "eval", n_boot=10)
    # one model for both: nothing to say
    assert main(["predict", str(images[1]), "--model", str(tmp_path / "m0.keras"), "--out",
                 str(tmp_path / "seg"), "--no-progress", "--force"]) == 0
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*different models.*")
        evaluate(tmp_path / "seg", tmp_path / "data", tmp_path / "eval", n_boot=10, force=True)


def test_headline_says_when_no_hd95_is_finite(tmp_path):
    # Every prediction empty: each HD95 is inf. The headline left its HD95 line out, so
    # the model's distances read as not measured rather than as infinite in every case.
    shape = (12, 12)
    cases = image_cases(tmp_path, shape, {"observer1": ((2, 5), (2, 5))})
    for case in cases:
        io.write_mask(tmp_path / "pred" / f"{case.id}_mask.tif", np.zeros(shape, bool))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = evaluate(tmp_path / "pred", cases, tmp_path / "out", n_boot=10)
    from bcseg.measure.evaluate import headline_lines
    assert "test HD95 vs observer1: none finite (mean of 0; 2 inf left out)" in headline_lines(result)


def test_a_probability_map_of_another_spacing_is_refused_as_its_mask_is(study, tmp_path):
    # The mask beside it with the image's spacing: only the probability map, stated at
    # 3x3x3 mm, belongs to another stack (or a resampled one); it was scored silently.
    case, pred = study["cases"][0], study["preds"][0]
    io.write_mask(tmp_path / "pred" / f"{case.id}_mask.tif", pred, study["spacing"])
    io.write_probability(tmp_path / "pred" / f"{case.id}_prob.tif", study["prob"], (3.0, 3.0, 3.0))
    with pytest.raises(DataError) as info:
        evaluate(tmp_path / "pred", [case], tmp_path / "out", n_boot=10)
    message = str(info.value)
    assert f"{case.id}_prob.tif" in message and "spacing 3x3x3 mm differs from its image's" in message
    assert not (tmp_path / "out").exists()


def test_one_file_given_for_two_observers_is_refused(tmp_path):
    # A manifest row naming observer1's file in observer2's column too (a copied cell):
    # the observers "agreed" with Dice 1 on that case, which raised the human ceiling.
    cases = image_cases(tmp_path, (12, 12), {"observer1": ((2, 5), (2, 5)), "observer2": ((2, 6), (2, 5))})
    (tmp_path / "manifest.csv").write_text(
        "id,image,mask_observer1,mask_observer2,group\n"
        "a,images/a.tif,observer1/a.tif,observer1/a.tif,a\n"
        "b,images/b.tif,observer1/b.tif,observer2/b.tif,b\n")
    for case in cases:
        io.write_mask(tmp_path / "pred" / f"{case.id}_mask.tif", rect((12, 12), (2, 5), (2, 5)))
    with pytest.raises(DataError) as info:
        evaluate(tmp_path / "pred", tmp_path / "manifest.csv", tmp_path / "out", n_boot=10)
    assert "a: observers observer1 and observer2 are given one file, a.tif" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_without_each_observer_as_a_target_there_is_no_human_level_test(tmp_path):
    # targets=("union",) scores no model-vs-observer rows for the paired test to pair:
    # it printed four verdicts of "Δ Dice = +nan ... n = 0" against "the other observers
    # (mean)" of two observers.
    cases = image_cases(tmp_path, (12, 12), {"observer1": ((2, 5), (2, 5)), "observer2": ((2, 6), (2, 5))})
    for case in cases:
        io.write_mask(tmp_path / "pred" / f"{case.id}_mask.tif", rect((12, 12), (2, 5), (2, 5)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = evaluate(tmp_path / "pred", cases, tmp_path / "out", targets=("union",), n_boot=10)
    summary = json.loads(result["summary_json"].read_text())
    assert summary["human_level"] is None and result["human_level"] == []
    assert list(summary["references"]) == ["union", "inter-observer"]


def test_a_consensus_of_one_observer_alone_is_refused_before_anything_is_written(tmp_path):
    # targets=("union",) with one observer selected scores no reference at all: evaluate
    # wrote metrics.csv (a header), agreement.csv and a summary of no reference, then
    # failed with a bare StopIteration.
    cases = image_cases(tmp_path, (12, 12), {"observer1": ((2, 5), (2, 5)), "observer2": ((2, 6), (2, 5))})
    for case in cases:
        io.write_mask(tmp_path / "pred" / f"{case.id}_mask.tif", rect((12, 12), (2, 5), (2, 5)))
    with pytest.raises(UsageError, match="union, staple need two or more observers; 1 selected"):
        evaluate(tmp_path / "pred", cases, tmp_path / "out", observers="observer1",
                 targets=("union", "staple"), n_boot=10)
    assert not (tmp_path / "out").exists()
    with warnings.catch_warnings():  # with "each" the observer is scored, the consensus left out
        warnings.simplefilter("ignore")
        result = evaluate(tmp_path / "pred", cases, tmp_path / "out", observers="observer1",
                          targets=("each", "union"), n_boot=10)
    assert list(json.loads(result["summary_json"].read_text())["references"]) == ["observer1"]


def test_a_prediction_of_a_case_no_observer_drew_says_so(tmp_path):
    # predict over the whole folder segments its unlabelled images too. Their masks were
    # refused with "(name the others with --observer)", when there are no others to name.
    cases = image_cases(tmp_path, (12, 12), {"observer1": ((2, 5), (2, 5)), "observer2": ((2, 6), (2, 5))})
    image = io.write_image(tmp_path / "images" / "c.tif", np.zeros((12, 12), np.uint8))
    cases.append(Case("c", image, {}))
    for case in cases:
        io.write_mask(tmp_path / "pred" / f"{case.id}_mask.tif", rect((12, 12), (2, 5), (2, 5)))
    with pytest.raises(DataError) as info:
        evaluate(tmp_path / "pred", cases, tmp_path / "out", n_boot=10)
    message = str(info.value)
    assert "c: no observer drew a mask of this case, so nothing scores its prediction; move c_mask.tif" in message
    assert "--observer" not in message and not (tmp_path / "out").exists()


def evaluate_mm_beside_voxels(tmp_path):
    """Case a has its spacing (0.1 mm), b none; each prediction 2 rows below observer1."""
    boxes = {"observer1": ((4, 8), (4, 8)), "observer2": ((4, 8), (6, 10))}
    cases = image_cases(tmp_path, (20, 20), boxes, spacings=((0.1, 0.1), None))
    for case, spacing in zip(cases, ((0.1, 0.1), None)):
        io.write_mask(tmp_path / "pred" / f"{case.id}_mask.tif", rect((20, 20), (6, 10), (4, 8)), spacing)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = evaluate(tmp_path / "pred", cases, tmp_path / "out", n_boot=10)
    return result, json.loads(result["summary_json"].read_text())


def test_no_hd95_verdict_from_millimetres_and_voxels_pooled(tmp_path):
    # HD95 differences of 0.2 mm and 2 voxels were averaged and read against the margin
    # of 1 (mm? voxel?), with a verdict.
    result, summary = evaluate_mm_beside_voxels(tmp_path)
    assert summary["unit"] == "mixed"
    assert {c["metric"] for c in summary["human_level"]["comparisons"]} == {"dice"}
    assert not any("HD95" in line for line in result["human_level"])


def test_a_probability_map_of_another_model_than_its_mask_is_refused(tmp_path):
    # Each file predict writes records the model and settings that made it. A map left
    # from another model's run was scored into pixel_soft_score beside this mask's Dice.
    cases = image_cases(tmp_path, (12, 12), {"observer1": ((2, 5), (2, 5))})
    (tmp_path / "pred").mkdir()
    for case in cases:
        mask = rect((12, 12), (2, 5), (2, 5)).astype(np.uint8) * 255
        tifffile.imwrite(tmp_path / "pred" / f"{case.id}_mask.tif", mask, software=io.MADE_WITH + "model-b")
    tifffile.imwrite(tmp_path / "pred" / "a_prob.tif", np.full((12, 12), 0.2, np.float32),
                     software=io.MADE_WITH + "model-a")
    with pytest.raises(DataError) as info:
        evaluate(tmp_path / "pred", cases, tmp_path / "out", n_boot=10)
    assert "a_prob.tif: was made by another model or settings than a_mask.tif beside it" in str(info.value)
    assert not (tmp_path / "out").exists()
    tifffile.imwrite(tmp_path / "pred" / "a_prob.tif", np.full((12, 12), 0.2, np.float32),
                     software=io.MADE_WITH + "model-b")  # the same run's: scored
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        evaluate(tmp_path / "pred", cases, tmp_path / "out", n_boot=10)


def test_distances_in_mm_and_voxels_are_not_averaged_together(tmp_path):
    # HD95 against observer1 is 0.2 mm in case a and 2 voxels in case b: their mean,
    # "1.10 mixed", was a number of no unit in the headline, the table and summary.json.
    result, summary = evaluate_mm_beside_voxels(tmp_path)
    rows = read_rows(tmp_path / "out" / "metrics.csv")
    hd95 = {r["case"]: float(r["hd95"]) for r in rows if r["reference"] == "observer1"}
    assert hd95 == {"a": pytest.approx(0.2), "b": 2.0}  # each case in its own unit, kept
    for name, entry in summary["references"].items():
        for key in ("hd95", "assd", "volume_pred", "volume_truth", "abs_volume_diff"):
            stats = entry["metrics"][key]
            assert stats["mean"] is None and (stats["n"], stats["n_finite"]) == (2, 0), (name, key)
        assert entry["metrics"]["dice"]["mean"] is not None  # no unit: averaged
    from bcseg.measure.evaluate import headline_lines
    assert not any("mixed" in line or "HD95" in line for line in headline_lines(result))
    assert all(row["hd95"] == "–" for row in ceiling_table(summary))


def test_three_observers_where_one_saw_a_tumour_disagree_infinitely(tmp_path):
    # observer1 and observer2 drew nothing, observer3 a tumour: pairs HD95 NaN (both
    # empty), inf, inf. Their mean over pairs was NaN, "undefined", which hid in the
    # ceiling an observer who saw a tumour the others did not.
    nothing = ((0, 0), (0, 0))
    cases = image_cases(tmp_path, (12, 12), {"observer1": nothing, "observer2": nothing,
                                             "observer3": ((2, 5), (2, 5))})
    for case in cases:
        io.write_mask(tmp_path / "pred" / f"{case.id}_mask.tif", rect((12, 12), (2, 5), (2, 5)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = evaluate(tmp_path / "pred", cases, tmp_path / "out", n_boot=10)
    ceiling = json.loads(result["summary_json"].read_text())["references"]["inter-observer"]["metrics"]
    assert (ceiling["hd95"]["n_inf"], ceiling["assd"]["n_inf"]) == (2, 2)
    assert ceiling["dice"]["mean"] == pytest.approx(1 / 3)  # Dice 1, 0, 0 per case: never NaN


def test_areas_of_images_and_volumes_of_stacks_are_not_averaged_together(tmp_path):
    # A 2D image's area (1 mm^2) and a stack's volume (4 mm^3) were averaged into a
    # "volume" of 2.5 in summary.json: a number of no unit. Both are in mm, so the
    # distances are averaged; the volumes stay per case in metrics.csv.
    def box(shape, corner, size):
        m = np.zeros(shape, bool)
        m[tuple(slice(c, c + s) for c, s in zip(corner, size))] = True
        return m

    cases = []
    for name, shape, spacing, start, size in (("a", (6, 6), (0.5, 0.5), (1, 1), (2, 2)),
                                              ("b", (3, 6, 6), (2.0, 0.5, 0.5), (0, 1, 1), (2, 2, 2))):
        image = io.write_image(tmp_path / "images" / f"{name}.tif", np.zeros(shape, np.uint8), spacing)
        truth = box(shape, start, size)
        masks = {o: (io.write_mask(tmp_path / o / f"{name}.tif", truth, spacing),)
                 for o in ("observer1", "observer2")}
        cases.append(Case(name, image, masks))
        # the prediction: the same box one row (0.5 mm) lower, Dice 0.5, HD95 0.5 mm
        moved = box(shape, start[:-2] + (start[-2] + 1, start[-1]), size)
        io.write_mask(tmp_path / "pred" / f"{name}_mask.tif", moved, spacing)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = evaluate(tmp_path / "pred", cases, tmp_path / "out", n_boot=10)
    summary = json.loads(result["summary_json"].read_text())
    assert (summary["level"], summary["unit"]) == ("mixed", "mm")
    rows = read_rows(tmp_path / "out" / "metrics.csv")
    volume = {r["case"]: float(r["volume_pred"]) for r in rows
              if r["reference"] == "observer1" and r["level"] != "slice"}
    assert volume == {"a": 4 * 0.25, "b": 8 * 2.0 * 0.25}  # 1 mm^2 and 4 mm^3, each kept
    for name, entry in summary["references"].items():
        for key in ("volume_pred", "volume_truth", "abs_volume_diff"):
            stats = entry["metrics"][key]
            assert stats["mean"] is None and (stats["n"], stats["n_finite"]) == (2, 0), (name, key)
    metrics = summary["references"]["observer1"]["metrics"]
    assert metrics["hd95"]["mean"] == 0.5 and metrics["dice"]["mean"] == 0.5  # mm in both: averaged
    assert metrics["rel_volume_diff"]["mean"] == 0.0  # a ratio has no unit


@pytest.mark.parametrize("keywords, said", [
    # nothing to score: the consensus targets need two observers; was a bare StopIteration
    ({"observers": "observer1", "targets": ["staple"]}, "two or more observers"),
    ({"observers": ["observer2"], "targets": ["union", "intersection"]}, "two or more observers"),
    ({"n_boot": 2.5}, "n_boot"),  # was cut to 2 without a word
    ({"seed": 1.5}, "seed"), ({"seed": -1}, "seed"),
    ({"targets": ["union", "union"]}, "twice"),  # recorded in summary.json as asked
])
def test_evaluate_refuses_bad_settings_before_writing(study, tmp_path, keywords, said):
    out = tmp_path / "eval"
    with pytest.raises(UsageError, match=said) as caught:
        evaluate(study["root"] / "pred", study["root"] / "data", out, **{"n_boot": 10, **keywords})
    assert "\n" not in str(caught.value)
    assert not out.exists()


@pytest.mark.parametrize("keywords, said", [
    # read by protocol 'reference' alone: the honest protocol dropped it without a word
    ({"reference_size": 64}, "reference_size"),
    # with it: 0 was a ZeroDivisionError, -5 NumPy's 'cannot be negative', 7.5 a TypeError,
    # 10**6 a 3.6 TiB MemoryError, after the model loaded
    ({"reference_size": 0, "protocol": "reference", "model": "unread.keras"}, "reference_size"),
    ({"reference_size": 7.5, "protocol": "reference", "model": "unread.keras"}, "reference_size"),
    ({"reference_size": 10**6, "protocol": "reference", "model": "unread.keras"}, "reference_size"),
])
def test_evaluate_refuses_a_bad_reference_size(study, tmp_path, keywords, said):
    out = tmp_path / "eval"
    with pytest.raises(UsageError, match=said):
        evaluate(study["root"] / "pred", study["root"] / "data", out, **{"n_boot": 10, **keywords})
    assert not out.exists()
