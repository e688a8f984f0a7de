"""The reference study's test score of a model, beside bcseg's honest per-specimen Dice.

:func:`reference_protocol` scores a 2D model the way the reference study did:
every slice fitted to the model's input size, augmented offline into 24 copies,
predicted, and scored with the study's per-row soft Dice averaged per batch.
:func:`bcseg.measure.evaluate.evaluate` calls it for ``protocol="reference"``.
TensorFlow is imported only inside :func:`reference_protocol`, where the model runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bcseg.atomic import real_path
from bcseg.data.dataset import Case, read_case_image, read_case_masks
from bcseg.errors import ModelError
from bcseg.measure.metrics import REFERENCE_EPS, batch_mean, soft_scores
from bcseg.measure.observers import union

__all__ = ["reference_protocol", "PROTOCOLS", "REFERENCE_BATCH", "REFERENCE_PROTOCOL_NOTE",
           "SOFT_REDUCTION"]

SOFT_REDUCTION = "row"  # the reference study's score as it executed (bcseg.measure.metrics.pixel_soft_score)
PROTOCOLS = ("honest", "reference")
REFERENCE_BATCH = 32  # the default batch of tf.keras 2's model.evaluate
REFERENCE_PROTOCOL_NOTE = (
    "Scored the way the reference study did: every slice of every evaluated case fitted to "
    "the model's input size, augmented offline into 24 copies (12 rotations x 2 random "
    "trims), predicted as probabilities, and scored with the study's dice_coef as it "
    "executed (a soft Dice per image row, smooth=1e-7) against the union of the observers, "
    "averaged per batch of 32 augmented slices and then over batches, as model.evaluate "
    "did. Augmented copies of one slice are near-duplicates and rows, not specimens, are "
    "averaged: this is not an estimate of per-specimen Dice.")


def _model_input_size(model, default: int) -> int:
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4:
        raise ModelError(None, f"the reference protocol needs a 2D model (input (B, H, W, C)), "
                         f"not one with input shape {shape}")
    return int(shape[1]) if shape[1] is not None else default


def _augmented_slices(case: Case, names: list[str], size: int, rng):
    """The study's test inputs for one case: 24 augmented copies of every slice."""
    from bcseg.learn.augment import reference_offline_augment
    from bcseg.data.intensity import normalise
    from bcseg.learn.pipeline import to_square

    image, _ = read_case_image(case)
    masks = read_case_masks(Case(case.id, case.image, {n: case.masks[n] for n in names}), image.shape)
    truth = union([masks[n] for n in names])
    image = normalise(image)
    stack, truth = (image[None], truth[None]) if image.ndim == 2 else (image, truth)
    for z in range(stack.shape[0]):
        square = to_square(stack[z], size)
        mask = to_square(truth[z].astype(np.float32), size, order=0) > 0.5
        yield reference_offline_augment(square, mask, size=size, rng=rng)


def reference_protocol(model_path, matched, size: int = 128, seed: int = 0,
                       batch_size: int = REFERENCE_BATCH) -> dict:
    """The reference study's test score of a model on the matched cases.

    Parameters
    ----------
    model_path : str or Path
        A training run folder or a ``.keras`` file of a 2D model.
    matched : list of (Case, files, observer names)
        The evaluated cases, as :func:`evaluate` pairs them.
    size : int
        Slice size when the model takes any size (the study's was 128).
    seed : int
        Seed of the random trims.
    batch_size : int
        Images per batch of the averaging (``model.evaluate``'s default, 32).

    Returns
    -------
    dict
        ``value``, ``reduction``, ``eps``, ``batch_size``, ``size``, ``seed``,
        ``n_cases``, ``n_slices``, ``n_images``, ``model`` and ``note``.
    """
    from bcseg.learn.saved import load_model
    from bcseg.rundir import load_run

    path = load_run(model_path)[0][0]  # a k-fold run: its first member
    model = load_model(path)
    size = _model_input_size(model, size)
    rng = np.random.default_rng(seed)
    row_scores, n_slices = [], 0
    for case, _, names in matched:
        for images, masks in _augmented_slices(case, names, size, rng):
            prob = model.predict(images[..., None], batch_size=batch_size, verbose=0)
            row_scores.append(soft_scores(masks, prob, SOFT_REDUCTION))  # (24, size)
            n_slices += 1
    scores = np.concatenate(row_scores)
    return {"value": batch_mean(scores, batch_size), "reduction": SOFT_REDUCTION, "eps": REFERENCE_EPS,
            "batch_size": int(batch_size), "size": int(size), "seed": int(seed),
            "n_cases": len(matched), "n_slices": n_slices, "n_images": len(scores),
            "model": str(real_path(path)), "note": REFERENCE_PROTOCOL_NOTE}
