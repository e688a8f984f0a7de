"""The presence gate (``model.presence_gate``): a mask times one learned image-level
"tumour here?", checked against its parts, trained on real tiny images with empty
ones among them, grafted onto a saved model (``--init``) and run end to end."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from bcseg.after_fit import train_and_evaluate
from bcseg.data.phantom import write_phantom
from bcseg.errors import ModelError
from bcseg.infer.segment import load_models, segment_case
from bcseg.data.dataset import discover
from bcseg.learn.losses import bce_dice_loss
from bcseg.learn.models import PRESENCE_START, unet, with_presence_gate
from bcseg.learn.saved import load_model

pytestmark = [pytest.mark.filterwarnings("ignore:only 3 groups for 5 folds:UserWarning"),
              pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]


def _parts(model: keras.Model) -> keras.Model:
    """The ungated mask and the presence, as outputs of the same graph."""
    return keras.Model(model.inputs[0], [model.get_layer("mask").output, model.get_layer("presence").output])


@pytest.mark.parametrize("ndim", [2, 3])
def test_the_output_is_the_mask_times_the_presence(ndim):
    model = unet(ndim=ndim, base_filters=2, depth=2, presence_gate=True, dropout=0.2)
    x = np.random.default_rng(0).random((3,) + (8,) * ndim + (1,), dtype=np.float32)
    mask, presence = (np.asarray(t) for t in _parts(model)(x, training=False))
    assert presence.shape == (3, 1)
    gated = np.asarray(model(x, training=False))
    assert gated.shape == x.shape and gated.dtype == np.float32
    np.testing.assert_allclose(gated, mask * presence.reshape((3,) + (1,) * (ndim + 1)), rtol=1e-6)
    assert model.get_layer("presence").get_weights()[1].tolist() == [PRESENCE_START]


def test_a_model_without_the_gate_has_none_and_flags_must_be_booleans():
    assert "presence" not in {layer.name for layer in unet(base_filters=2, depth=1).layers}
    with pytest.raises(ValueError, match="presence_gate"):
        unet(base_filters=2, depth=1, presence_gate=1)


def test_the_gate_saves_and_loads_safely_in_float32(tmp_path):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = unet(base_filters=2, depth=2, presence_gate=True)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    model.save(tmp_path / "gated.keras")
    loaded = load_model(tmp_path / "gated.keras")  # safe mode; rebuilt to compute in float32
    assert all(layer.dtype_policy.name == "float32" for layer in loaded.layers)
    x = np.random.default_rng(1).random((2, 16, 16, 1), dtype=np.float32)
    mask, presence = (np.asarray(t) for t in _parts(loaded)(x))
    np.testing.assert_allclose(np.asarray(loaded(x)), mask * presence[:, :, None, None], rtol=1e-6)


def test_grafting_keeps_every_weight_and_gates_the_old_output():
    plain = unet(base_filters=2, depth=2, residual=True)
    gated = with_presence_gate(plain)
    x = np.random.default_rng(2).random((2, 16, 16, 1), dtype=np.float32)
    old = np.asarray(plain(x))
    mask, presence = (np.asarray(t) for t in _parts(gated)(x))
    np.testing.assert_array_equal(mask, old)  # the same layers, the same weights
    np.testing.assert_allclose(np.asarray(gated(x)), old * presence[:, :, None, None], rtol=1e-6)
    assert with_presence_gate(gated) is gated  # a gated model is left as it is
    other = keras.Sequential([keras.Input((None, None, 1)), keras.layers.Conv2D(1, 1, name="mask")])
    with pytest.raises(ValueError, match="no U-Net bottleneck"):
        with_presence_gate(other)


def _discs_and_blanks(n: int = 8, size: int = 32):
    """n noisy images, half with one bright disc (its mask) and half with none."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    images, masks = [], []
    for i in range(n):
        disc = np.zeros((size, size), bool)
        if i % 2 == 0:
            cy, cx, r = rng.integers(10, 22), rng.integers(10, 22), rng.integers(5, 9)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        images.append(0.2 + 0.6 * disc + 0.1 * rng.random((size, size)))
        masks.append(disc)
    return (np.stack(images)[..., None].astype(np.float32),
            np.stack(masks)[..., None].astype(np.float32))


@pytest.mark.parametrize("seed", [0, 1])
def test_training_with_empty_images_closes_the_gate_on_them_only(seed):
    keras.utils.set_random_seed(seed)
    x, y = _discs_and_blanks()
    model = unet(base_filters=8, depth=2, presence_gate=True)
    presence = keras.Model(model.inputs[0], model.get_layer("presence").output)
    before = np.asarray(presence(x)).ravel()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=bce_dice_loss)
    model.fit(x, y, epochs=60, batch_size=8, verbose=0)
    after = np.asarray(presence(x)).ravel()
    blanks, discs = after[1::2], after[0::2]
    # It starts open on every image (about sigmoid(3) = 0.95) ...
    assert before.min() > 0.5
    # ... and learns to close on the blanks while staying open on the discs.
    assert blanks.max() < 0.5 < discs.min(), (blanks, discs)
    assert np.asarray(model(x))[1::2].max() < 0.5  # nothing marked on a blank image


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gate_phantom") / "data"
    write_phantom(root, n=3, shape=(8, 32, 32), seed=5)
    return root


TINY = {"model": {"base_filters": 4, "depth": 2, "presence_gate": True}, "data": {"size": 32},
        "train": {"epochs": 1, "batch_size": 8, "k": 5}}


def test_a_gated_run_trains_saves_and_segments(phantom, tmp_path):
    out = tmp_path / "run"
    train_and_evaluate(phantom, out, overrides=TINY, report=False)
    assert "presence" in {layer.name for layer in load_model(out / "model_best.keras").layers}
    models, settings = load_models(out)
    _, _, mask, prob = segment_case(models, discover(phantom)[0], settings)
    assert mask.shape == prob.shape == (8, 32, 32)


def test_init_busi_takes_the_gate_and_a_model_without_a_bottleneck_is_refused_early(phantom, tmp_path):
    out = tmp_path / "run"
    train_and_evaluate(phantom, out, overrides=TINY, report=False, init="busi")
    names = {layer.name for layer in load_model(out / "model_best.keras").layers}
    assert {"presence", "bottleneck_relu2"} <= names  # the bundled U-Net, gated
    odd = tmp_path / "odd.keras"
    keras.Sequential([keras.Input((None, None, 1)),
                      keras.layers.Conv2D(1, 1, activation="sigmoid")]).save(odd)
    with pytest.raises(ModelError, match="odd.keras.*no U-Net bottleneck"):
        train_and_evaluate(phantom, tmp_path / "refused", overrides=TINY, report=False, init=odd)
    assert not (tmp_path / "refused").exists()
