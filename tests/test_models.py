"""U-Net builder: shapes, options, saving and a memorisation check on tiny models."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from bcseg.learn.losses import DiceMetric, bce_dice_loss
from bcseg.learn.models import activation_values, model_divisor, size_divisor, unet


def _predict(model, x):
    return np.asarray(model(x, training=False))


@pytest.mark.parametrize("shape", [(32, 32), (16, 48), (64, 24)])
def test_2d_output_matches_input_size(shape):
    model = unet(ndim=2, base_filters=4, depth=3)
    out = _predict(model, np.random.default_rng(0).random((2, *shape, 1), dtype=np.float32))
    assert out.shape == (2, *shape, 1)
    assert out.dtype == np.float32
    assert np.all((out >= 0) & (out <= 1))


@pytest.mark.parametrize("shape", [(8, 16, 16), (4, 8, 24)])
def test_3d_output_matches_input_size(shape):
    model = unet(ndim=3, in_channels=2, base_filters=2, depth=2)
    out = _predict(model, np.zeros((1, *shape, 2), np.float32))
    assert out.shape == (1, *shape, 1)


@pytest.mark.parametrize("options", [
    {"norm": "instance"},
    {"norm": None, "residual": True},
    {"dropout": 0.3, "upsample": "linear"},
    {"stem_stride": 2, "residual": True},
    {"stem_stride": 2, "upsample": "linear", "norm": "instance"},
    {"decoder_norm_only": True},
])
@pytest.mark.parametrize("ndim", [2, 3])
def test_options_build_and_run(ndim, options):
    model = unet(ndim=ndim, base_filters=2, depth=2, **options)
    divisor = size_divisor(2, options.get("stem_stride", 1))
    assert model_divisor(model) == divisor
    shape = (1,) + (divisor * 2,) * ndim + (1,)
    assert _predict(model, np.ones(shape, np.float32)).shape == shape


def test_max_filters_caps_every_level():
    def widths(model):
        return {layer.name: layer.filters for layer in model.layers
                if isinstance(layer, keras.layers.Conv2D) and layer.name.endswith("conv1")}

    free = widths(unet(base_filters=4, depth=3))
    capped = widths(unet(base_filters=4, depth=3, max_filters=8))
    # 4, 8, 16, 32 going down; the cap leaves 4 and 8 and cuts 16 and 32 to 8
    assert sorted(set(free.values())) == [4, 8, 16, 32]
    assert sorted(set(capped.values())) == [4, 8] and capped.keys() == free.keys()
    assert capped["bottleneck_conv1"] == 8 and capped["enc0_conv1"] == 4


def test_decoder_norm_only_puts_batch_norm_in_decoder_only():
    model = unet(base_filters=2, depth=2, decoder_norm_only=True)
    bn = [layer.name for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bn and all(name.startswith("dec") for name in bn)


def test_output_stays_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = unet(base_filters=2, depth=1)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.output.dtype == "float32"


@pytest.mark.parametrize("bad, message", [
    ({"ndim": 4}, "ndim"),
    ({"depth": 0}, "depth"),
    ({"base_filters": 2.5}, "base_filters"),
    ({"norm": "layer"}, "norm"),
    ({"dropout": 1.0}, "dropout"),
    ({"upsample": "cubic"}, "upsample"),
    ({"stem_stride": 3}, "power of two"),
    ({"norm": None, "decoder_norm_only": True}, "decoder_norm_only"),
    ({"base_filters": 8, "max_filters": 4}, "max_filters"),
])
def test_bad_arguments_raise_value_error(bad, message):
    with pytest.raises(ValueError, match=message):
        unet(**bad)


def test_size_divisor():
    assert size_divisor(4) == 16
    assert size_divisor(4, 2) == 32


def test_save_load_round_trip_in_safe_mode(tmp_path):
    model = unet(base_filters=2, depth=2, stem_stride=2, residual=True, norm="instance", dropout=0.1)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True, compile=False)
    x = np.random.default_rng(1).random((2, 32, 16, 1), dtype=np.float32)
    np.testing.assert_array_equal(_predict(loaded, x), _predict(model, x))
    assert model_divisor(loaded) == 8


def _discs(n=4, size=32):
    """Bright discs of different centres and radii on a dark, slightly noisy background."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    images, masks = [], []
    for cy, cx, r in [(10, 12, 6), (20, 18, 8), (16, 8, 5), (12, 22, 7)][:n]:
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        images.append(0.1 + 0.7 * disc + 0.05 * rng.random((size, size)))
        masks.append(disc)
    return (np.stack(images)[..., None].astype(np.float32),
            np.stack(masks)[..., None].astype(np.float32))


def test_tiny_unet_memorises_discs_and_reloads_compiled(tmp_path):
    keras.utils.set_random_seed(0)
    x, y = _discs()
    # 8 filters: with 4, some seeds start with every ReLU dead and never learn.
    model = unet(base_filters=8, depth=2)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=bce_dice_loss, metrics=[DiceMetric()])
    history = model.fit(x, y, batch_size=4, epochs=40, verbose=0)
    assert history.history["dice"][-1] > 0.9

    path = tmp_path / "trained.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)  # compile=True: bcseg.learn.losses imported
    assert loaded.loss is bce_dice_loss
    np.testing.assert_allclose(_predict(loaded, x), _predict(model, x), atol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    ({"ndim": 2.0}, "ndim"),  # passed the check (2.0 in (2, 3)), then 'can't multiply sequence'
    ({"depth": 20}, "depth"),  # 16 * 2**20 filters: TensorFlow's OOM, naming no argument
    ({"base_filters": 5000}, "base_filters"),
    ({"stem_stride": 64}, "stem_stride"),
])
def test_unet_refuses_what_the_recipe_ranges_refuse(kwargs, message):
    with pytest.raises(ValueError, match=message):
        unet(**kwargs)


@pytest.mark.parametrize(("ndim", "options"), [
    (2, {}),
    (2, {"norm": None, "residual": True, "max_filters": 8}),
    (2, {"residual": True, "dropout": 0.3, "upsample": "linear"}),
    (2, {"stem_stride": 2, "residual": True, "in_channels": 2}),
    (2, {"stem_stride": 2, "upsample": "linear", "norm": "instance"}),
    (2, {"decoder_norm_only": True, "residual": True}),
    (3, {"residual": True}),
    (3, {"stem_stride": 2, "norm": None}),
])
def test_activation_values_count_every_layer_output(ndim, options):
    # The memory check multiplies this count by measured bytes per value: it must
    # follow the builder (the count per level it replaced missed the stem's
    # full-resolution block, most of the busi recipe's activations).
    shape = (32, 32) if ndim == 2 else (8, 16, 16)
    model = unet(ndim=ndim, base_filters=4, depth=2, **options)
    every = keras.Model(model.input, [layer.output for layer in model.layers[1:]])
    x = np.zeros((1, *shape, options.get("in_channels", 1)), np.float32)
    counted = activation_values(shape, base_filters=4, depth=2, **options)
    assert sum(math.prod(y.shape) for y in every(x)) == counted
