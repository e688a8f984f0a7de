"""Saved models: loading a ``.keras`` file safely and reading its input contract.

Training (``--init``, ``--resume``) and inference load and check models here, so
both refuse the same files the same way. Keras is imported inside the functions,
not at the top: the ONNX runtime reads :class:`ModelSpec` without TensorFlow.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bcseg.data.io import not_a_file
from bcseg.errors import ModelError

if TYPE_CHECKING:
    import keras

PROBABILITY_SLACK = 1e-5   # how far past 0..1 a sigmoid's rounding may go (see probabilities)


def load_model(path: str | Path) -> keras.Model:
    """Load a ``.keras`` model safely (``safe_mode=True``, not compiled).

    Raises
    ------
    ModelError
        Missing file, not a zip archive, or not a Keras model.
    """
    import keras  # here, not at the top: the ONNX runtime predicts without Keras

    path = Path(path)
    if not path.exists():
        raise ModelError(path, "model file not found")
    if path.is_dir():
        raise ModelError(path, "is a folder; pass a .keras file or a training run folder")
    problem = not_a_file(path, "a .keras file")
    if problem:  # a named pipe would wait forever; say what it is, not "a folder"
        raise ModelError(path, problem)
    if not zipfile.is_zipfile(path) and _starts_as_zip(path):  # its end (the zip's index) is gone
        raise ModelError(path, f"is truncated or damaged ({path.stat().st_size} bytes, the end of its "
                         "zip archive missing); copy it again from where it was saved")
    if not zipfile.is_zipfile(path):  # Keras would report such a file as "not found"
        raise ModelError(path, "is not a Keras model file (a .keras file is a zip archive; "
                         "legacy .h5 files are not read); pass a .keras file saved by bcseg train")
    try:
        model = keras.saving.load_model(str(path), safe_mode=True, compile=False)
    except Exception as exc:  # Keras raises ValueError, zipfile/OSError, TypeError, ...
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelError(path, f"cannot load the Keras model ({reason}); "
                         "is it a .keras file saved by bcseg train?") from None
    if not isinstance(model, keras.Model):
        raise ModelError(path, "does not hold a Keras model")
    return _in_float32(model)


def _starts_as_zip(path: Path) -> bool:
    """Whether a file begins as a zip archive does (a local file header), as a .keras
    file cut short by a failed copy still does."""
    with open(path, "rb") as handle:
        return handle.read(4) == b"PK\x03\x04"


def _in_float32(model: keras.Model) -> keras.Model:
    """The model rebuilt to compute in float32 if it was trained under mixed precision.

    A saved layer keeps its training dtype policy; float16 or bfloat16 compute is slow
    or missing on many CPUs, and float32 is the reference for inference. The weights
    are float32 under mixed precision, so they carry over unchanged.
    """
    import keras

    if all(layer.dtype_policy.name == "float32" for layer in model.layers):
        return model

    def to_float32(node):
        if isinstance(node, dict):
            if node.get("class_name") in ("DTypePolicy", "FloatDTypePolicy"):
                return dict(node, config=dict(node.get("config", {}), name="float32"))
            return {k: to_float32(v) for k, v in node.items()}
        if isinstance(node, list):
            return [to_float32(v) for v in node]
        return node

    rebuilt = keras.Model.from_config(to_float32(model.get_config()))
    rebuilt.set_weights(model.get_weights())
    return rebuilt


@dataclass(frozen=True)
class ModelSpec:
    """A segmentation model's input contract, read from its graph."""

    ndim: int                        # spatial dimensions, 2 or 3
    channels: int
    fixed: tuple[int | None, ...]    # static spatial input sizes, None where free
    divisor: int


def model_spec(model: keras.Model) -> ModelSpec:
    """What inference needs to know of a model: dimensions, channels, fixed sizes."""
    if isinstance(getattr(model, "spec", None), ModelSpec):  # bcseg.infer.onnx_runtime.OnnxModel
        return model.spec
    from bcseg.learn.models import model_divisor  # imports Keras

    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelError(None, "bcseg models take one input image and give one output map")
    shape = tuple(model.inputs[0].shape)
    if len(shape) not in (4, 5):
        raise ModelError(None, f"model input shape {shape} is neither 2D (N, H, W, C) "
                         "nor 3D (N, Z, H, W, C)")
    return ModelSpec(len(shape) - 2, shape[-1] or 1, shape[1:-1], model_divisor(model))


def probabilities(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """The model's probabilities ``(N, *spatial)`` for a batch ``(N, *spatial, C)``.

    Raises ModelError (without a path: the caller names the model) for an output of
    another shape, or values that are not probabilities.
    """
    out = model.predict_on_batch(np.ascontiguousarray(x))
    out = np.asarray(out, dtype=np.float32)
    if out.shape != x.shape[:-1] + (1,):
        raise ModelError(None, f"model maps input {x.shape} to {out.shape}; bcseg "
                         "expects one probability channel of the input's spatial size")
    # A model that ends without its sigmoid gives scores, not probabilities: the
    # threshold would cut them at an arbitrary level and the masks look plausible.
    # NaN (damaged weights) fails the same test. Checked per batch, for the cost of
    # one pass over the output.
    low, high = float(np.min(out)), float(np.max(out))
    # A sigmoid's rounding may land a few ulps outside 0..1 (ONNX Runtime's gives
    # 1.0000001 at a logit of 17.844): that is a probability, not a score. Allowed
    # and clipped, so an exported model's confident pixels do not refuse it.
    if not (low >= -PROBABILITY_SLACK and high <= 1.0 + PROBABILITY_SLACK):
        raise ModelError(None, f"gives values from {low:.3g} to {high:.3g}, not probabilities "
                         "from 0 to 1: a bcseg model ends in a sigmoid; is this a model "
                         "saved by bcseg train, its weights intact?")
    if low < 0.0 or high > 1.0:
        out = np.clip(out, 0.0, 1.0)  # a copy: the model's array may be read-only
    return out[..., 0]
