"""The bundled 2D model trained on BUSI, used when no ``--model`` is given.

BUSI: Al-Dhabyani W, Gomaa M, Khaled H, Fahmy A. Dataset of breast ultrasound
images. Data in Brief 28 (2020) 104863. doi:10.1016/j.dib.2019.104863 (CC BY 4.0).
The ``inference.json`` beside it holds the inference settings chosen on validation,
which images the model saw, and this citation; ``benchmarks/build_pretrained.py``
rebuilds both. Where that file lists ``members``, the bundled default is an ensemble
of the folder's model files (``busi_unet2d.keras`` first, the one ``--init busi``
starts from), each with its own settings inside it.
"""

from __future__ import annotations

from pathlib import Path

from bcseg.errors import ModelError

FOLDER = Path(__file__).parent / "pretrained"
MODEL_NAME = "busi_unet2d.keras"
CITATION = ("Al-Dhabyani W, Gomaa M, Khaled H, Fahmy A. Dataset of breast ultrasound images. "
            "Data in Brief 28 (2020) 104863. doi:10.1016/j.dib.2019.104863. Licence: CC BY 4.0")


def pretrained_path() -> Path:
    """Path of the bundled model (an ensemble's first member, the file ``--init busi``
    starts from); :class:`ModelError` if this install lacks it."""
    path = FOLDER / MODEL_NAME
    if not path.is_file():
        raise ModelError(path, "the bundled BUSI model is not installed; pass a model of your own "
                         "(predict --model, train --init) or rebuild it with benchmarks/build_pretrained.py")
    return path


def pretrained_info() -> dict:
    """The sidecar metadata: images seen, inference settings, citation, and for an
    ensemble its ``members``. A damaged sidecar is a ConfigError naming it."""
    from bcseg.rundir import SETTINGS_FILE, read_settings

    settings = read_settings(pretrained_path().parent / SETTINGS_FILE)
    return {} if settings is None else settings.to_dict()


def pretrained_model() -> Path:
    """What ``bcseg predict`` runs without ``--model``: the bundled folder where its
    ``inference.json`` records an ensemble, else the one bundled model file.

    Member files (``busi_unet2d_2.keras``, ...) with no sidecar listing them are
    refused rather than left out: the first member alone is not the bundled default.
    """
    from bcseg.rundir import SETTINGS_FILE

    path = pretrained_path()
    if pretrained_info().get("members"):
        return FOLDER
    others = sorted(p.name for p in FOLDER.glob(MODEL_NAME.replace(".keras", "_*.keras")))
    if others:
        raise ModelError(FOLDER / SETTINGS_FILE, f"lists no ensemble members, but {', '.join(others)} "
                         f"lie beside {MODEL_NAME}: the bundled ensemble's settings are missing or "
                         "damaged; reinstall bcseg")
    return path
