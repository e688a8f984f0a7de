"""Can an image classifier tell BUSI's normal images from its lesion images well enough
to leave >= 90% of normals empty at no cost in lesion Dice (issue 18)?

The linear probe (``normal_probe.py``, AUC 0.89) read a frozen lesion-only network; this
trains a classifier with direct image-level labels: the run's encoder (its weights, or
fresh ones with ``--from-scratch``) under a pooled head (mean and maximum of the
bottleneck, one sigmoid), fine-tuned on the run's training folds' lesion and normal
images with the run's own augmentation, class-balanced. The normal images of the
training folds are split by whole groups, like the run's lesions: the run's
validation lesions and the validation normals choose the cut-off (the share of
validation lesions it may drop); the test fold scores it.

With ``--segmenter`` (a run or an ensemble folder, e.g. the bundled default's fold-0
twin) the test fold is also segmented, and the gate applied on top: a lesion image the
classifier calls normal scores Dice 0, a normal image is empty when either says so.

Example (a fold-0 run of ``busi.py``; about 10-20 minutes on 2 CPU cores)::

    .venv/bin/python benchmarks/normal_classifier.py bench-out/r10/fold_0 \\
        --segmenter bench-out/seed-ens-r10/ensemble --epochs 40 --out bench-out/normal-classifier
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from machine import cpu_flags, fold_run_parser, read_fold_run, write_results  # noqa: E402
from normal_probe import auc  # noqa: E402

DROPPED = (0.0, 0.02, 0.05)  # share of the validation lesions a cut-off may drop
NORMAL_VALIDATION = 0.15  # share of the training folds' normal groups kept for validation


def classifier(run: Path, from_scratch: bool):
    """The run's encoder (or a fresh one like it) with a pooled one-sigmoid head."""
    import keras

    from bcseg.config import load_config
    from bcseg.learn.saved import load_model
    from bcseg.learn.train import build_model

    net = (build_model(load_config(run / "config.toml")) if from_scratch
           else load_model(run / "model_best.keras"))
    names = {layer.name for layer in net.layers}
    bottleneck = net.get_layer("bottleneck_dropout" if "bottleneck_dropout" in names
                               else "bottleneck_relu2").output
    pooled = keras.layers.Concatenate()([keras.layers.GlobalAveragePooling2D()(bottleneck),
                                         keras.layers.GlobalMaxPooling2D()(bottleneck)])
    pooled = keras.layers.Dropout(0.3)(pooled)
    return keras.Model(net.inputs[0], keras.layers.Dense(1, activation="sigmoid", name="lesion")(pooled))


def training_data(images, labels, augment, seed: int, epoch: int, batch: int):
    """One epoch: the images in a fresh order, augmented, with class-balancing weights."""
    import tensorflow as tf

    from bcseg.learn.pipeline import _augment_function

    order = np.random.default_rng(seed * 1009 + epoch).permutation(len(images))
    x = images[order][..., None]
    y = labels[order].astype(np.float32)
    w = np.where(y == 1, 0.5 / labels.mean(), 0.5 / (1 - labels.mean())).astype(np.float32)
    seeds = np.stack([np.full(len(x), seed * 100_003 + epoch), np.arange(len(x))], 1).astype(np.int64)
    function = _augment_function(augment, x.shape[1:], x.shape[1:])
    pictures = tf.data.Dataset.from_tensor_slices((x, np.zeros_like(x), seeds)).map(
        lambda a, b, s: function(a, b, s)[0], num_parallel_calls=2, deterministic=True)
    return tf.data.Dataset.zip((pictures, tf.data.Dataset.from_tensor_slices((y, w)))).map(
        lambda a, yw: (a, yw[0], yw[1])).batch(batch).prefetch(2)


def scores(model, images) -> np.ndarray:
    return np.concatenate([np.asarray(model(images[i:i + 32][..., None], training=False))[:, 0]
                           for i in range(0, len(images), 32)])


def segmenter_results(folder: Path, cases) -> dict[str, tuple[float | None, bool]]:
    """Per test image: the segmenter's Dice (None for a normal image) and whether its mask is empty."""
    from bcseg.data.cases import read_case_masks
    from bcseg.infer.segment import load_models, segment_case
    from bcseg.measure.metrics import dice

    models, settings = load_models(folder)
    out = {}
    for case in cases:
        mask = np.asarray(segment_case(models, case, settings, keep_prob=False)[2]) > 0
        truth = None
        if case.label_class != "normal":
            truth = np.logical_or.reduce(list(read_case_masks(case, mask.shape).values()))
        out[case.id] = (None if truth is None else float(dice(mask, truth)), not mask.any())
    return out


def gate_rows(val_lesions, test_scores, test_is_lesion, dice=None, seg_empty=None) -> list[dict]:
    """The gate at each cut-off of :data:`DROPPED`, on the test images.

    A cut-off drops a share of the validation lesions (their lowest scores; 0: just
    below the lowest). An image scoring below it is called normal: its mask is left
    empty. With the segmenter's ``dice`` per lesion image (NaN for normal images) and
    whether its own mask is ``seg_empty``: the lesions' mean Dice alone and gated (a
    lesion called normal scores 0) and the normals left empty alone and gated.
    """
    val_lesions, test_scores = np.sort(np.asarray(val_lesions)), np.asarray(test_scores)
    lesion_image = np.asarray(test_is_lesion, bool)
    rows = []
    for share in DROPPED:
        cut = float(val_lesions[int(np.floor(share * len(val_lesions)))]) - 1e-9
        kept = test_scores >= cut
        row = {"validation_lesions_dropped": share, "cut": cut,
               "test_lesions_dropped": float(np.mean(~kept[lesion_image])),
               "test_normals_empty": float(np.mean(~kept[~lesion_image]))}
        if dice is not None:
            lesion_dice = np.asarray(dice, float)[lesion_image]
            empty = np.asarray(seg_empty, bool)[~lesion_image]
            row.update({"segmenter_dice": float(lesion_dice.mean()),
                        "gated_dice": float(np.where(kept[lesion_image], lesion_dice, 0.0).mean()),
                        "segmenter_normals_empty": float(empty.mean()),
                        "gated_normals_empty": float(np.mean(empty | ~kept[~lesion_image]))})
        rows.append(row)
    return rows


def train_classifier(args, cfg: dict, arrays: dict) -> tuple[list[dict], dict]:
    """Fine-tune the classifier on ``arrays["train"]``; its history and its scores of the
    validation and test images."""
    import keras

    from bcseg.learn.augment import AugmentConfig

    keras.utils.set_random_seed(args.seed)
    model = classifier(args.run, args.from_scratch)
    steps = args.epochs * -(-len(arrays["train"][0]) // 16)
    model.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(args.learning_rate, steps)),
                  "binary_crossentropy")
    augment = AugmentConfig.from_dict(cfg["augment"])
    history = []
    for epoch in range(args.epochs):
        fit = model.fit(training_data(*arrays["train"], augment, args.seed, epoch, 16), verbose=0, shuffle=False)
        val = scores(model, arrays["validation"][0])
        history.append({"epoch": epoch + 1, "loss": float(fit.history["loss"][-1]),
                        "validation_auc": auc(val[arrays["validation"][1] == 1], val[arrays["validation"][1] == 0])})
        print(f"epoch {epoch + 1}/{args.epochs} loss {history[-1]['loss']:.4f} "
              f"validation AUC {history[-1]['validation_auc']:.3f}", flush=True)

    return history, {name: scores(model, arrays[name][0]) for name in ("validation", "test")}


def main(argv=None) -> int:
    parser = fold_run_parser(__doc__, "bench-out/normal-classifier")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--from-scratch", action="store_true", help="fresh weights, not the run's encoder")
    parser.add_argument("--segmenter", type=Path, help="a run or ensemble folder to gate (test fold)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scores", type=Path, help="the JSON of an earlier run of this script on the "
                        "same fold: gate --segmenter with its classifier's scores instead of training")
    args = parser.parse_args(argv)
    from bcseg.config import load_config
    from bcseg.data.splits import validation_ids
    from bcseg.learn.pipeline import slice_samples

    started = time.time()
    by_id, folds, split = read_fold_run(args.run, args.data)
    cfg = load_config(args.run / "config.toml")
    fold = split["fold"]
    cases = sorted(by_id.values(), key=lambda c: c.id)
    training_normals = [c for c in cases if c.label_class == "normal" and folds[c.id] != fold]
    held = set(split["validation"]) | set(validation_ids(training_normals, NORMAL_VALIDATION, seed=0))
    parts = {"train": [c for c in cases if folds[c.id] != fold and c.id not in held],
             "validation": [c for c in cases if folds[c.id] != fold and c.id in held],
             "test": [c for c in cases if folds[c.id] == fold]}
    arrays = {}
    for name, chosen in parts.items():
        images = slice_samples(chosen, "reference", size=cfg["data"]["size"]).images
        arrays[name] = (images, np.array([c.label_class != "normal" for c in chosen], float))

    if args.scores:  # the classifier of an earlier run, gating another segmenter
        import json

        earlier = json.loads(args.scores.read_text(encoding="utf-8"))
        result = {name: np.array([earlier["scores"][name][c.id] for c in parts[name]])
                  for name in ("validation", "test")}
        history, args.epochs, args.from_scratch = earlier["history"], earlier["epochs"], earlier["from_scratch"]
        args.learning_rate, args.seed = earlier["learning_rate"], earlier["seed"]
    else:
        history, result = train_classifier(args, cfg, arrays)
    val_lesions = result["validation"][arrays["validation"][1] == 1]
    test_y = arrays["test"][1] == 1
    dice = empty = None
    if args.segmenter:
        segmented = segmenter_results(args.segmenter, parts["test"])
        dice = np.array([segmented[c.id][0] if lesion else np.nan for c, lesion in zip(parts["test"], test_y)])
        empty = np.array([segmented[c.id][1] for c in parts["test"]])
    rows = gate_rows(val_lesions, result["test"], test_y, dice, empty)
    segmented = dice is not None

    test_auc = auc(result["test"][test_y], result["test"][~test_y])
    counts = {name: (int(y.sum()), int((1 - y).sum())) for name, (_, y) in arrays.items()}
    lines = ["| cut-off: validation lesions dropped | test lesions dropped | test normals left empty"
             + (" | segmenter Dice (lesions) | gated Dice | normals empty: segmenter alone, gated |"
                if segmented else " |"),
             "|---:|---:|---:|" + ("---:|---:|---|" if segmented else "")]
    for row in rows:
        line = (f"| {100 * row['validation_lesions_dropped']:.0f}% | {100 * row['test_lesions_dropped']:.1f}% "
                f"| {100 * row['test_normals_empty']:.0f}% |")
        if segmented:
            line += (f" {row['segmenter_dice']:.3f} | {row['gated_dice']:.3f} | "
                     f"{100 * row['segmenter_normals_empty']:.0f}%, {100 * row['gated_normals_empty']:.0f}% |")
        lines.append(line)
    minutes = (time.time() - started) / 60
    lines += ["", f"Classifier: {'fresh weights' if args.from_scratch else 'encoder of'} `{args.run}`, "
              f"{args.epochs} epochs, learning rate {args.learning_rate:g}, seed {args.seed}; "
              f"test AUC {test_auc:.3f}, validation AUC {history[-1]['validation_auc']:.3f}. "
              f"Images (lesion, normal): training {counts['train']}, validation {counts['validation']}, "
              f"test fold {fold} {counts['test']}. {minutes:.0f} min; CPU: {cpu_flags()}."]
    name = f"normal_classifier_fold{fold}" + ("_scratch" if args.from_scratch else "") + (
        f"_{args.segmenter.parent.name}" if args.scores and args.segmenter else "")
    write_results(args.out, name, {"run": str(args.run), "fold": fold, "epochs": args.epochs,
                                   "from_scratch": args.from_scratch, "learning_rate": args.learning_rate,
                                   "segmenter": str(args.segmenter) if args.segmenter else None,
                                   "seed": args.seed, "test_auc": test_auc, "counts": counts, "rows": rows,
                                   "scores": {name: {c.id: float(v) for c, v in zip(parts[name], result[name])}
                                              for name in ("validation", "test")},
                                   "history": history, "minutes": minutes, "cpu": cpu_flags()},
                  "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
