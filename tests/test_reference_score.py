"""The reference study's score reproduced exactly: row and pixel readings, eps = 1e-7.

Hand-computed on a 3x3 case where the true Dice, the per-row score (the study as
executed under tf.keras 2) and the per-pixel score all differ.
"""

from __future__ import annotations

import numpy as np
import pytest

from bcseg.measure import metrics as M

EPS = 1e-7
# Truth: 3 pixels; prediction: 3 pixels; they share (0, 0) and (2, 1).
TRUTH = np.array([[1, 1, 0],
                  [0, 0, 0],
                  [0, 1, 0]])
PRED = np.array([[1, 0, 0],
                 [0, 1, 0],
                 [0, 1, 0]], float)


def test_true_dice_row_and_pixel_all_differ_by_hand():
    # Dice: 2*2 / (3+3) = 2/3.
    assert M.dice(PRED, TRUTH) == pytest.approx(2 / 3)
    # Rows: (2*1+e)/(2+1+e), (0+e)/(0+1+e), (2*1+e)/(1+1+e) = 1 -> mean about 5/9.
    rows = [(2 + EPS) / (3 + EPS), EPS / (1 + EPS), 1.0]
    assert M.pixel_soft_score(TRUTH, PRED) == pytest.approx(np.mean(rows), rel=1e-12)
    assert M.pixel_soft_score(TRUTH, PRED, reduction="row") == pytest.approx(5 / 9, abs=1e-6)
    # Pixels: 2 true positives score 1, 5 true negatives e/e = 1, the false
    # positive and the false negative e/(1+e) -> (7 + 2e/(1+e)) / 9, about 7/9.
    pixel = (7 + 2 * EPS / (1 + EPS)) / 9
    assert M.pixel_soft_score(TRUTH, PRED, reduction="pixel") == pytest.approx(pixel, rel=1e-12)
    assert M.pixel_soft_score(TRUTH, PRED, reduction="pixel") == pytest.approx(7 / 9, abs=1e-6)


def test_keras_shapes_squeeze_the_channel_of_the_prediction():
    # The study: masks (N, H, W), model output (N, H, W, 1). tf.keras 2 squeezed the
    # output, so axis=-1 ran along the rows: the same number as the row reading.
    truth = np.stack([TRUTH, TRUTH])
    prob = np.stack([PRED, PRED])[..., None]
    assert M.pixel_soft_score(truth, prob) == pytest.approx(M.pixel_soft_score(TRUTH, PRED))
    # Both with a channel axis: it is dropped from both, the reading still chosen.
    assert M.pixel_soft_score(truth[..., None], prob, reduction="pixel") == pytest.approx(
        (7 + 2 * EPS / (1 + EPS)) / 9)


def test_smoothing_of_one_was_not_the_study():
    # eps=1 is what bcseg used before: the pixel reading with eps=1 gives
    # (2 TP*3/3 + 5 TN*1 + FP 1/2 + FN 1/2) / 9 = 8/9, not the study's number.
    assert M.pixel_soft_score(TRUTH, PRED, reduction="pixel", eps=1.0) == pytest.approx(8 / 9)
    assert M.REFERENCE_EPS == 1e-7


def test_empty_rows_score_near_zero_unless_the_prediction_is_exactly_empty():
    truth = np.zeros((2, 4))
    assert M.pixel_soft_score(truth, np.zeros((2, 4))) == 1.0
    faint = np.full((2, 4), 0.01)  # 0.04 probability per row
    assert M.pixel_soft_score(truth, faint) == pytest.approx(EPS / (0.04 + EPS))


def test_batch_averaging_as_model_evaluate():
    # Three images, batch 2: batch means (r0+r1)/2 and r2, then their mean.
    truth = np.stack([TRUTH, np.zeros((3, 3)), TRUTH])
    prob = np.stack([PRED, np.zeros((3, 3)), np.zeros((3, 3))])
    r = [M.pixel_soft_score(t, p) for t, p in zip(truth, prob)]
    assert r[1] == 1.0
    expected = ((r[0] + r[1]) / 2 + r[2]) / 2
    assert M.pixel_soft_score(truth, prob, batch_size=2) == pytest.approx(expected)
    assert M.pixel_soft_score(truth, prob) == pytest.approx(np.mean(r))
    assert M.pixel_soft_score(truth, prob, batch_size=2) != pytest.approx(np.mean(r))


def test_one_row_is_one_sample_per_batch():
    # A single row (1D truth) has one score, (2*0.5 + eps) / (1 + 0.5 + eps) for prob
    # [0.5, 0] against truth [1, 0]; with batch_size it raised "IndexError: invalid
    # index to scalar variable".
    expected = (2 * 0.5 + EPS) / (1 + 0.5 + EPS)
    assert M.pixel_soft_score([1, 0], [0.5, 0.0]) == pytest.approx(expected, abs=1e-12)
    assert M.pixel_soft_score([1, 0], [0.5, 0.0], batch_size=32) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("kwargs", [{"reduction": "image"}, {"eps": 0.0}, {"eps": "x"},
                                    {"batch_size": 0}])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        M.pixel_soft_score(TRUTH, PRED, **kwargs)


def test_seed_loss_is_the_study_loss_as_executed():
    from bcseg.config import load_config
    from bcseg.learn.losses import get_loss, reference_dice_loss

    assert load_config("seed")["train"]["loss"] == "reference_dice"
    assert get_loss("reference_dice") is reference_dice_loss
    rng = np.random.default_rng(0)
    truth = np.stack([TRUTH, np.zeros((3, 3)), TRUTH]).astype(np.float32)
    prob = np.stack([PRED, np.zeros((3, 3)), rng.random((3, 3))]).astype(np.float32)
    loss = np.asarray(reference_dice_loss(truth[..., None], prob[..., None]))
    expected = [1 - M.pixel_soft_score(t, p, reduction="row") for t, p in zip(truth, prob)]
    np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-6)
    # Keras's mean over the batch is the study's mean over all rows of the batch.
    assert loss.mean() == pytest.approx(1 - M.pixel_soft_score(truth, prob), rel=1e-5)
    assert loss[0] == pytest.approx(1 - 5 / 9, abs=1e-5)


# ------------------------------------------------------- evaluate --protocol reference
def _zero_model(path, size):
    """A 2D model whose output is exactly 0 everywhere (sigmoid of -200 in float32)."""
    import keras

    inputs = keras.Input((size, size, 1))
    layer = keras.layers.Conv2D(1, 1, activation="sigmoid", kernel_initializer="zeros",
                                bias_initializer=keras.initializers.Constant(-200.0))
    keras.Model(inputs, layer(inputs)).save(path)
    return path


def test_protocol_reference_scores_augmented_slices_beside_the_honest_figure(tmp_path):
    import json

    from bcseg.data import io
    from bcseg.learn.augment import reference_offline_augment
    from bcseg.data.cases import read_case_image, read_case_masks
    from bcseg.data.dataset import discover
    from bcseg.measure.evaluate import evaluate
    from bcseg.data.intensity import normalise
    from bcseg.measure.observers import union
    from bcseg.data.phantom import write_phantom
    from bcseg.learn.pipeline import to_square

    write_phantom(tmp_path / "data", n=2, shape=(8, 40, 40))
    cases = discover(tmp_path / "data")
    for case in cases:
        io.write_mask(tmp_path / "pred" / f"{case.id}_mask.tif", read_case_masks(case)["observer1"])
    model = _zero_model(tmp_path / "zero.keras", 32)
    result = evaluate(tmp_path / "pred", tmp_path / "data", tmp_path / "eval", n_boot=50,
                      protocol="reference", model=model, seed=5)
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    study = summary["reference_protocol"]
    # Expected by hand: the prediction is exactly 0, so a row scores e/e = 1 where the
    # augmented union is empty and e/(n + e), about 0, where it holds n > 0 pixels.
    rng = np.random.default_rng(5)
    per_image = []
    for case in cases:
        image = normalise(read_case_image(case)[0])
        truth = union(list(read_case_masks(case).values()))
        for z in range(image.shape[0]):
            square = to_square(image[z], 32)
            mask = to_square(truth[z].astype(np.float32), 32, order=0) > 0.5
            _, masks = reference_offline_augment(square, mask, size=32, rng=rng)
            n = masks.sum(axis=-1)
            per_image += list(np.where(n == 0, 1.0, EPS / (n + EPS)).mean(axis=-1))
    assert study["n_images"] == len(per_image) == 2 * 8 * 24
    batches = [np.mean(per_image[i:i + 32]) for i in range(0, len(per_image), 32)]
    assert study["value"] == pytest.approx(np.mean(batches), rel=1e-9)
    assert (study["reduction"], study["eps"], study["batch_size"], study["size"]) == ("row", 1e-7, 32, 32)
    assert 0 < study["value"] < 1
    assert result["headline"]["reference_protocol"] == study["value"]
    from bcseg.measure.evaluate import headline_lines
    assert any(line.startswith("study-style score (--protocol reference: 24 augmented 32 px copies")
               for line in headline_lines(result))
    assert summary["references"]["observer1"]["metrics"]["dice"]["mean"] == 1.0  # honest, beside it


def test_protocol_reference_without_model_is_refused(tmp_path):
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "bcseg.cli", "evaluate", "--pred", str(tmp_path),
                          "--truth", str(tmp_path), "--out", str(tmp_path / "out"),
                          "--protocol", "reference"], capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "--model" in run.stderr
    assert not (tmp_path / "out").exists()


def _pixel_model(path, channels=1, activation="sigmoid", names=()):
    """A 2D model of any input size whose output is a per-pixel function of its input
    (the mean of its channels): its score depends on which image it is given."""
    import keras

    from bcseg.rundir import InferenceSettings, embed_settings

    inputs = keras.Input((None, None, channels))
    layer = keras.layers.Conv2D(1, 1, activation=activation,
                                kernel_initializer=keras.initializers.Constant(8.0 / channels),
                                bias_initializer=keras.initializers.Constant(-4.0))
    keras.Model(inputs, layer(inputs)).save(path)
    if names:
        embed_settings(path, InferenceSettings(ndim=2, channels=channels, channel_names=tuple(names),
                                               normalisation={n: "auto" for n in names}))
    return path


def _study_score(tmp_path, data, model, capsys, name):
    from bcseg.cli import main

    out = tmp_path / name
    code = main(["evaluate", "--pred", str(tmp_path / "pred"), "--truth", str(data), "--out", str(out),
                 "--protocol", "reference", "--model", str(model), "--no-report"])
    out_text, err = capsys.readouterr()
    return code, err, out


def _uspa_with_predictions(tmp_path):
    from bcseg.data import io
    from bcseg.data.cases import read_case_masks
    from bcseg.data.dataset import discover
    from bcseg.data.phantom import write_phantom

    write_phantom(tmp_path / "data", n=2, shape=(8, 32, 32), seed=3, channels=("us", "pa"))
    for case in discover(tmp_path / "data"):
        io.write_mask(tmp_path / "pred" / f"{case.id}_mask.tif", read_case_masks(case)["observer1"])
    return tmp_path / "data"


@pytest.mark.parametrize("kind, said", [
    ("linear", "not probabilities from 0 to 1"),
    ("two channels", "takes 2 channels (us, pa)"),
    ("k-fold run", "is an ensemble of 2 models; the reference protocol scores one model"),
])
def test_protocol_reference_refuses_a_model_it_cannot_score_naming_it(kind, said, tmp_path, capsys):
    """The study's soft Dice of scores that are not probabilities (a model saved without
    its sigmoid) is a number of no meaning, and the protocol feeds one grey image: a
    model of several channels crashed (exit 1) after the honest scoring. An ensemble was
    scored as its first member, under the ensemble's name."""
    data = _uspa_with_predictions(tmp_path)
    if kind == "linear":
        model = _pixel_model(tmp_path / "linear.keras", activation=None)
    elif kind == "two channels":
        model = _pixel_model(tmp_path / "uspa.keras", channels=2, names=("us", "pa"))
    else:  # its first member alone was scored, as if it were the ensemble
        model = tmp_path / "kfold"
        for fold in (0, 1):
            (model / f"fold_{fold}").mkdir(parents=True)
            _pixel_model(model / f"fold_{fold}" / "model_best.keras", names=("us",))
    code, err, out = _study_score(tmp_path, data, model, capsys, "eval")
    lines = err.strip().splitlines()
    assert code == 4 and len(lines) == 1, err
    assert lines[0].startswith(f"bcseg: error: {model}: ") and said in lines[0], err
    assert not out.exists()


def test_protocol_reference_scores_the_channel_the_model_reads(tmp_path, capsys):
    """A one-channel model of pa scores the pa images (the same figure as on a folder
    of those images alone), not the case's first channel, ultrasound."""
    import json
    import shutil

    data = _uspa_with_predictions(tmp_path)
    model = _pixel_model(tmp_path / "pa.keras", names=("pa",))
    grey = tmp_path / "grey"
    shutil.copytree(data / "images" / "pa", grey / "images")
    shutil.copytree(data / "masks", grey / "masks")
    values = {}
    for name, truth in (("named", data), ("grey", grey)):
        code, err, out = _study_score(tmp_path, truth, model, capsys, name)
        assert code == 0, err
        values[name] = json.loads((out / "summary.json").read_text())["reference_protocol"]["value"]
    assert values["named"] == pytest.approx(values["grey"], rel=1e-9)
    us_model = _pixel_model(tmp_path / "us.keras", names=("us",))
    code, err, out = _study_score(tmp_path, data, us_model, capsys, "us")
    assert code == 0, err
    assert json.loads((out / "summary.json").read_text())["reference_protocol"]["value"] != pytest.approx(
        values["grey"], rel=1e-3)


def test_protocol_reference_refuses_cases_without_the_models_channel_before_scoring(
        tmp_path, capsys, monkeypatch):
    """A model of pa given cases of ultrasound alone was refused only once the honest
    scoring had run; the cases are checked with the model now, before any is scored."""
    import shutil

    from bcseg.measure import evaluate as evaluation

    data = _uspa_with_predictions(tmp_path)
    shutil.rmtree(data / "images" / "pa")
    (data / "channels.json").write_text('["us"]')
    scored = []
    monkeypatch.setattr(evaluation, "_score_cases", lambda *a, **k: scored.append(a))
    model = _pixel_model(tmp_path / "pa.keras", names=("pa",))
    code, err, out = _study_score(tmp_path, data, model, capsys, "eval")
    lines = err.strip().splitlines()
    assert code == 3 and len(lines) == 1, err
    assert "has channel(s) us; the model scored by --protocol reference takes 'pa'" in lines[0]
    assert not scored and not out.exists()


def test_protocol_reference_fits_slices_to_the_size_the_run_trained_at(tmp_path, capsys):
    """'every slice fitted to the model's input size': a model of any input size whose run
    trained it at 48 px (a busi-recipe run: 160) was scored at 128 px, the model at
    another scale than it was trained and predicts at."""
    import json

    from bcseg.rundir import InferenceSettings, embed_settings

    data = _uspa_with_predictions(tmp_path)
    model = _pixel_model(tmp_path / "us48.keras")
    embed_settings(model, InferenceSettings(ndim=2, channels=1, channel_names=("us",),
                                            normalisation={"us": "auto"}, input_size=48))
    code, err, out = _study_score(tmp_path, data, model, capsys, "eval")
    assert code == 0, err
    study = json.loads((out / "summary.json").read_text())["reference_protocol"]
    assert study["size"] == 48
    assert study["n_images"] == 24 * 2 * 8  # 24 copies of every slice of both cases
