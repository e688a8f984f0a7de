"""bcseg: breast tumour segmentation in ultrasound images and specimen stacks.

``import bcseg`` stays light: the functions below that need TensorFlow are imported
on first use.

>>> import bcseg                                             # doctest: +SKIP
>>> model = bcseg.load_model("runs/unet2d/model_best.keras")  # doctest: +SKIP
>>> mask, prob = bcseg.predict_volume(model, stack)          # doctest: +SKIP
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "predict_volume": "bcseg.infer.predict",
    "load_model": "bcseg.infer.predict",
    "unet": "bcseg.learn.models",
    "train": "bcseg.learn.train",
    "evaluate": "bcseg.measure.evaluate",
    "discover": "bcseg.data.dataset",
    "write_phantom": "bcseg.data.phantom",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bcseg' has no attribute {name!r}")
