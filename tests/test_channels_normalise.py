"""Each channel of a case is normalised by its own dtype at prediction, as in training.

Channels of one case may be stored in different dtypes (the phantom writes 8-bit
ultrasound beside float32 photoacoustics). Training normalises each channel in its
own dtype (8-bit divided by 255); prediction stacks them into one array first, and a
uint8 channel stacked with a float32 one had become float32 and was stretched
between its percentiles instead: the model saw another ultrasound than it learnt on.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tifffile

from bcseg import cli, rundir
from bcseg.data import io

SPACING = (0.2, 0.2)


def _us_threshold_model(path: Path) -> Path:
    """A 2D model of channels (us, pa) whose mask is exactly 'normalised us > 0.5'."""
    inputs = keras.Input((None, None, 2))
    conv = keras.layers.Conv2D(1, 1, activation="sigmoid")
    model = keras.Model(inputs, conv(inputs))
    conv.set_weights([np.array([20.0, 0.0], np.float32).reshape(1, 1, 2, 1), np.array([-10.0], np.float32)])
    model.save(path)
    rundir.embed_settings(path, rundir.InferenceSettings(
        ndim=2, input_size=32, channels=2, channel_names=("us", "pa"),
        normalisation={"us": "auto", "pa": "log"}, tta=False))
    return path


def test_a_uint8_channel_beside_a_float_channel_is_divided_by_255_as_in_training(tmp_path):
    us = np.full((32, 32), 140, np.uint8)
    us[:, 16:] = 220  # 140 / 255 = 0.55 and 220 / 255 = 0.86: every pixel above 0.5
    pa = np.linspace(1.0, 1000.0, 32 * 32, dtype=np.float32).reshape(32, 32)
    io.write_image(tmp_path / "data" / "images" / "us" / "S01.tif", us, SPACING)
    io.write_image(tmp_path / "data" / "images" / "pa" / "S01.tif", pa, SPACING)
    model = _us_threshold_model(tmp_path / "model.keras")
    assert cli.main(["predict", str(tmp_path / "data"), "--model", str(model), "--out",
                     str(tmp_path / "out"), "--no-progress"]) == 0
    mask = tifffile.imread(tmp_path / "out" / "S01_mask.tif")
    # Stretched between its percentiles, 140 became 0 and the left half was left out.
    assert mask.shape == (32, 32) and mask.all()
