"""The reference study's test score of a model, beside bcseg's honest per-specimen Dice.

:func:`reference_protocol` scores a 2D model the way the reference study did:
every slice fitted to the model's input size, augmented offline into 24 copies,
predicted, and scored with the study's per-row soft Dice averaged per batch.
:func:`bcseg.measure.evaluate.evaluate` calls it for ``protocol="reference"``.
TensorFlow is imported only inside :func:`reference_protocol`, where the model runs.
"""

from __future__ import annotations

import numpy as np

from bcseg.atomic import real_path
from bcseg.data.cases import Case, read_case_image, read_case_masks
from bcseg.errors import DataError, ModelError
from bcseg.measure.metrics import REFERENCE_EPS, batch_mean, soft_scores
from bcseg.measure.observers import union

__all__ = ["reference_protocol", "reference_model", "PROTOCOLS", "REFERENCE_BATCH", "REFERENCE_PROTOCOL_NOTE",
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


def _model_input_size(model, default: int, path) -> int:
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4:
        raise ModelError(path, f"the reference protocol needs a 2D model (input (B, H, W, C)), "
                         f"not one with input shape {shape}")
    return int(shape[1]) if shape[1] is not None else default


def _augmented_slices(case: Case, names: list[str], size: int, channel: str | None, method: str, rng):
    """The study's test inputs for one case: 24 augmented copies of every slice of the
    image the model reads (a model of one named channel: that channel, normalised by
    its own method)."""
    from bcseg.data.cases import read_case_channel_arrays
    from bcseg.data.intensity import channel_stats, normalise
    from bcseg.learn.augment import reference_offline_augment
    from bcseg.learn.pipeline import to_square

    if channel is not None and case.channels:
        image = read_case_channel_arrays(case, [channel])[0][channel]
    else:  # one unnamed image is the model's one channel, as predict reads it
        image = read_case_image(case)[0]
    image = normalise(image, channel_stats(image, method))
    masks = read_case_masks(Case(case.id, case.image, {n: case.masks[n] for n in names}), image.shape)
    truth = union([masks[n] for n in names])
    stack, truth = (image[None], truth[None]) if image.ndim == 2 else (image, truth)
    for z in range(stack.shape[0]):
        square = to_square(stack[z], size)
        mask = to_square(truth[z].astype(np.float32), size, order=0) > 0.5
        yield reference_offline_augment(square, mask, size=size, rng=rng)


def reference_model(model_path, cases=()):
    """The model the reference protocol scores, loaded and checked before anything is
    scored: ``(file, model, channel name or None, its normalisation method, the input
    size its run records or None)``.

    Raises ModelError naming the file for a model that is not 2D or takes more than
    one channel (the study fed one ultrasound image), or an ensemble (a k-fold run, an
    ensemble folder): the study scored one model, and its first member is not the whole.
    Raises DataError naming the image of the first of ``cases`` (of named channels)
    that lacks the model's channel.
    """
    from bcseg.learn.saved import load_model
    from bcseg.rundir import load_run

    files, settings = load_run(model_path)
    if len(files) > 1:  # scored as its first member, the figure was not the ensemble's
        raise ModelError(model_path, f"is an ensemble of {len(files)} models; the reference protocol "
                         f"scores one model, as the study did: give one member (e.g. {files[0]})")
    path = files[0]
    view = settings.member_views()[0]
    model = load_model(path)
    names = list(view.channel_names)
    channels = int(model.inputs[0].shape[-1] or 1)
    if channels != 1 or len(names) > 1:
        listed = f" ({', '.join(names)})" if names else ""
        raise ModelError(path, f"takes {max(channels, len(names))} channels{listed}; the reference "
                         "protocol scores a model of one image, as the study's ultrasound model was")
    _model_input_size(model, 0, path)
    channel = names[0] if names else None
    for case in cases:  # a case of one unnamed image is the model's channel, as predict reads it
        if channel is not None and case.channels and channel not in case.channel_names:
            raise DataError(case.image, f"case '{case.id}' has channel(s) {', '.join(case.channel_names)}; "
                            f"the model scored by --protocol reference takes '{channel}'")
    return path, model, channel, dict(view.normalisation).get(channel, "auto"), view.input_size


def reference_protocol(model_path, matched, size: int = 128, seed: int = 0,
                       batch_size: int = REFERENCE_BATCH, loaded=None) -> dict:
    """The reference study's test score of a model on the matched cases.

    Parameters
    ----------
    model_path : str or Path
        A training run folder or a ``.keras`` file of a 2D model of one channel.
    matched : list of (Case, files, observer names)
        The evaluated cases, as :func:`evaluate` pairs them.
    size : int
        Slice size when the model takes any size and its run records none (the
        study's was 128).
    seed : int
        Seed of the random trims.
    batch_size : int
        Images per batch of the averaging (``model.evaluate``'s default, 32).
    loaded : tuple, optional
        :func:`reference_model` of ``model_path``, when already loaded and checked.

    Returns
    -------
    dict
        ``value``, ``reduction``, ``eps``, ``batch_size``, ``size``, ``seed``,
        ``n_cases``, ``n_slices``, ``n_images``, ``model`` and ``note``.

    Raises
    ------
    ModelError
        Naming the model file, for a model :func:`reference_model` refuses or one
        whose output is not probabilities (a model saved without its sigmoid: the
        study's soft Dice of scores means nothing).
    """
    from bcseg.errors import naming
    from bcseg.infer.predict import probabilities

    path, keras_model, channel, method, trained = loaded or reference_model(model_path)
    # "fitted to the model's input size": a model of any input size runs at the size its
    # run trained it at (inference.json's input_size, 160 for the busi recipe), as predict
    # runs it; scored at 128 regardless, the figure was of the model at another scale
    size = _model_input_size(keras_model, trained or size, path)
    rng = np.random.default_rng(seed)
    row_scores, n_slices = [], 0
    with naming(path):
        for case, _, names in matched:
            for images, masks in _augmented_slices(case, names, size, channel, method, rng):
                prob = np.concatenate([probabilities(keras_model, images[i:i + batch_size, ..., None])
                                       for i in range(0, len(images), batch_size)])
                row_scores.append(soft_scores(masks, prob, SOFT_REDUCTION))  # (24, size)
                n_slices += 1
    scores = np.concatenate(row_scores)
    return {"value": batch_mean(scores, batch_size), "reduction": SOFT_REDUCTION, "eps": REFERENCE_EPS,
            "batch_size": int(batch_size), "size": int(size), "seed": int(seed),
            "n_cases": len(matched), "n_slices": n_slices, "n_images": len(scores),
            "model": str(real_path(path)), "note": REFERENCE_PROTOCOL_NOTE}
