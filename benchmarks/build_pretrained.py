"""Build the bundled BUSI model (``src/bcseg/pretrained/``) reproducibly.

Two ways:

- ``--from-run RUN``: bundle the best model of an existing BUSI run, e.g. the CPU
  budget run of ``benchmarks/busi.py --folds 0`` (trained on folds 1-4, so fold-0
  images stay unseen and the package's tests can check it on them);
- ``--all``: train on all 647 benign and malignant images with the ``busi`` recipe
  (``--epochs`` fixes the schedule; ``--budget-min`` bounds the training time instead),
  then bundle the result; with ``--normals`` BUSI's 133 normal images are trained on
  too, so that the model learns to leave tumour-free images empty. This is how
  the shipped model is made; since it saw every lesion image, the package's tests
  check generalisation with a held-out twin instead: the same recipe's fold-0
  benchmark run, bundled with ``--from-run ... --target tests/data/busi_heldout``.

The model is re-saved without its optimiser state (inference only; < 10 MB), with an
``inference.json`` that records the settings chosen on validation, which images it
saw, and BUSI's citation (CC BY 4.0).

Examples
--------
    .venv/bin/python benchmarks/build_pretrained.py --from-run bench-out/busi-cpu/fold_0
    .venv/bin/python benchmarks/build_pretrained.py --all --budget-min 20 --out bench-out/busi-all
    .venv/bin/python benchmarks/build_pretrained.py --all --normals --epochs 100 \
        --config benchmarks/configs/r7.toml --out bench-out/busi-all-r7n
    .venv/bin/python benchmarks/build_pretrained.py --from-run bench-out/busi-cpu/fold_0 \
        --target tests/data/busi_heldout

With ``--ensemble`` the bundle is a seed ensemble: ``--all`` runs of one recipe that
differ only in ``train.member_seed`` (so they share the validation split the
ensemble is tuned on), e.g. r10 and its second member r10s1 (the bundled default
since 2026-12-06)::

    .venv/bin/python benchmarks/build_pretrained.py --all --epochs 100 \
        --config benchmarks/configs/r10s1.toml --out bench-out/busi-all-r10s1 --target bench-out/bundle-r10s1
    .venv/bin/python benchmarks/build_pretrained.py --ensemble bench-out/busi-all-r10 \
        bench-out/busi-all-r10s1 --no-tta

and its held-out twin, the same two recipes' fold-0 runs of ``busi.py`` (fold 0 unseen)::

    .venv/bin/python benchmarks/build_pretrained.py --ensemble bench-out/r10/fold_0 \
        bench-out/r10s1/fold_0 --no-tta --heldout --target tests/data/busi_heldout

With ``--teacher`` (repeatable) the ``--all`` model is a student distilled from
them (``bcseg train --teacher``), e.g. from the five fold models of the 5-fold run::

    .venv/bin/python benchmarks/build_pretrained.py --all --normals --epochs 100 \
        --config benchmarks/configs/r7.toml --out bench-out/busi-student \
        --teacher bench-out/r7/fold_0 --teacher bench-out/r7/fold_1 ... --teacher bench-out/r7/fold_4
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "busi"
TARGET = ROOT / "src" / "bcseg" / "pretrained"


def _cited(settings, seen: str, source: str):
    """``settings`` with what the model saw, BUSI's citation and where it came from."""
    from bcseg import rundir
    from bcseg.pretrained import CITATION

    # Not the run's weights digest: the bundled file is the model re-saved for inference, whose
    # weights are other bytes; the run's digest beside it refused the bundle as "replaced".
    info = {k: v for k, v in settings.info.items() if k != rundir.WEIGHTS_KEY}
    return settings.replace(info=dict(
        info, trained_on=seen, dataset="BUSI (Al-Dhabyani et al. 2020)",
        citation=CITATION, licence="CC BY 4.0 (data); model released with bcseg", source_run=source))


def _save_member(run: Path, path: Path, meta) -> float:
    """Re-save ``run``'s best model at ``path`` for inference, ``meta`` inside it; its MB."""
    from bcseg import rundir
    from bcseg.atomic import atomic_path
    from bcseg.infer.predict import load_model

    model = load_model(run / rundir.MODEL_FILE)  # float32 compute, whatever it trained in
    with atomic_path(path) as tmp:
        model.save(tmp)  # compiled without an optimiser: weights and graph only
    # The settings and citation travel inside the .keras archive too; Keras ignores the entry.
    rundir.embed_settings(path, meta)
    size = path.stat().st_size / 1e6
    print(f"bundled {path} ({size:.1f} MB)")
    if size > 10:
        print("warning: the bundled model is over 10 MB", file=sys.stderr)
    return size


def _refuse_other_members(target: Path, names: list[str]) -> None:
    """Refuse to bundle beside members of an earlier ensemble that the new bundle would
    not list: the bundled default would refuse to run (bcseg.pretrained.pretrained_model)."""
    from bcseg.pretrained import MODEL_NAME

    stale = sorted(p.name for p in target.glob(MODEL_NAME.replace(".keras", "_*.keras"))
                   if p.name not in names)
    if stale:
        raise SystemExit(f"build_pretrained.py: {target}: holds {', '.join(stale)} of an earlier "
                         "ensemble, which this bundle would leave unlisted; remove them first")


def _without_tta(settings):
    """The settings with TTA off at the threshold and post-processing tuned without it
    (recorded beside the TTA choice): each flip is one more network pass."""
    if not settings.tta:
        return settings
    off = (settings.tuned or {}).get("without_tta")
    if off is None:  # no threshold was tuned without TTA: the recorded one was tuned with it
        raise SystemExit("build_pretrained.py: --no-tta: the run recorded no setting tuned without "
                         "TTA, and its threshold was tuned with it; bundle it with TTA")
    print(f"TTA off as asked (--no-tta): threshold {off['threshold']}, validation Dice "
          f"{off['validation_dice']}")
    return settings.replace(tta=False, threshold=off["threshold"], postprocess=tuple(off["postprocess"]),
                            info=dict(settings.info, validation_dice=off["validation_dice"]))


def bundle(run: Path, seen: str, target: Path = TARGET, tta: bool = True) -> Path:
    from bcseg import rundir
    from bcseg.pretrained import MODEL_NAME

    _refuse_other_members(target, [MODEL_NAME])
    settings = rundir.read_settings(run / rundir.SETTINGS_FILE)
    meta = _cited(settings if tta else _without_tta(settings), seen, str(run))
    target.mkdir(parents=True, exist_ok=True)  # after every check: a refusal leaves no folder
    path = target / MODEL_NAME
    _save_member(run, path, meta)
    digest = {rundir.WEIGHTS_KEY: rundir.weights_digest(path)}  # the re-saved file's weights
    rundir.write_settings(target, meta.replace(info=dict(meta.info, **digest)))
    print(f"trained on {seen}")
    return path


def bundle_ensemble(runs: list[Path], data: Path, target: Path = TARGET, tta: bool = True,
                    heldout: bool = False) -> list[Path]:
    """Bundle finished all-BUSI runs of one recipe that differ only in
    ``train.member_seed`` as one ensemble: each model saved as a member (the first as
    ``busi_unet2d.keras``, which ``--init busi`` starts from), with its own settings
    inside it, and ``inference.json`` recording the members and one threshold,
    post-processing and TTA choice tuned on their shared validation split (each
    validation image on the members' mean probability).

    With ``heldout`` the runs are fold runs of ``busi.py`` instead (a test fold held
    out), bundled as the held-out twin of such a bundle, never as the package's own."""
    from bcseg import rundir
    from bcseg.after_fit import tune_members
    from bcseg.config import load_config
    from bcseg.data.dataset import discover
    from bcseg.pretrained import MODEL_NAME

    from seed_ensemble import shared_split  # benchmarks/seed_ensemble.py: one split, no twins

    split = shared_split(runs, "build_pretrained.py")
    if split["test"] and not heldout:  # the bundle's record says it saw every image: only --all runs may say so
        raise SystemExit(f"build_pretrained.py: {runs[0]}: held {len(split['test'])} test images out; "
                         "--ensemble bundles --all runs, which train on every image (--heldout: a twin)")
    if heldout and (not split["test"] or Path(target).resolve() == TARGET.resolve()):
        raise SystemExit(f"build_pretrained.py: {runs[0] if not split['test'] else target}: a held-out "
                         "twin is made of fold runs, which held a test fold out, and is bundled "
                         "beside the package's model, not in its place (give --target)")
    names = [MODEL_NAME] + [MODEL_NAME.replace(".keras", f"_{k}.keras") for k in range(2, len(runs) + 1)]
    _refuse_other_members(target, names)
    kinds = "benign/malignant/normal" if _has_normals(split) else "benign/malignant"
    seen = (f"all {len(split['train']) + len(split['validation'])} BUSI {kinds} images "
            f"({len(split['train'])} training, {len(split['validation'])} validation, the "
            f"same for each member); fold 0 included: no BUSI lesion image is unseen by these models")
    if heldout:
        seen = (f"{len(split['train'])} BUSI {kinds} images for training and {len(split['validation'])} "
                f"for validation (folds other than {split['fold']} of folds.csv), the same for each "
                f"member; the {len(split['test'])} images of fold {split['fold']} were never seen")
    seen += _distilled(runs)
    target.mkdir(parents=True, exist_ok=True)
    size = 0.0
    for run, name in zip(runs, names):
        own = _cited(rundir.read_settings(run / rundir.SETTINGS_FILE), seen, str(run))
        size += _save_member(run, target / name, own)
    cfg = load_config(runs[0] / rundir.CONFIG_FILE)
    settings = tune_members(dict(zip(names, (r / rundir.MODEL_FILE for r in runs))), discover(data), cfg)
    if not tta:  # the choice tuned without TTA, recorded beside it
        settings = _without_tta(settings)
    rundir.write_settings(target, rundir.with_weights(
        _cited(settings, seen, ", ".join(str(r) for r in runs)), target))
    print(f"bundled an ensemble of {len(runs)} models, {size:.1f} MB in all: {seen}")
    return [target / n for n in names]


def _distilled(runs: list[Path]) -> str:
    """``"; distilled from ..."`` for students (what their teacher saw is what they
    learnt from), else nothing."""
    from bcseg import rundir
    from bcseg.config import load_config

    teachers = sorted({t for r in runs for t in load_config(r / rundir.CONFIG_FILE)["train"].get("teacher") or []})
    return f"; distilled from {', '.join(_shown(t) for t in teachers)}" if teachers else ""


def _shown(path: str) -> str:
    """A teacher's path as the repository knows it (relative to the checkout); the
    package's own bundle as what it was then, since this bundle replaces it."""
    resolved = Path(path).resolve()
    if resolved == TARGET.resolve():
        return "the bundle it replaced (src/bcseg/pretrained before it)"
    try:
        return str(resolved.relative_to(ROOT))
    except ValueError:
        return path


def _has_normals(fold: dict) -> bool:
    """Whether the run trained on BUSI normal images (their ids start with "normal")."""
    return any(str(case).startswith("normal") for case in fold["train"] + fold["validation"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-run", help="a BUSI training run folder to bundle")
    source.add_argument("--all", action="store_true", help="train on all 647 lesion images first")
    source.add_argument("--ensemble", nargs="+", metavar="RUN",
                        help="bundle these finished --all runs, which differ only in "
                        "train.member_seed, as one ensemble")
    parser.add_argument("--no-tta", action="store_true",
                        help="keep TTA off even where validation prefers it, at the threshold tuned "
                        "without it (each flip is one more pass per member: 2 members with TTA "
                        "cost 4 single passes)")
    parser.add_argument("--heldout", action="store_true",
                        help="with --ensemble: the runs are fold runs of busi.py; bundle their "
                        "held-out twin (into --target, e.g. tests/data/busi_heldout)")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--out", default="bench-out/busi-all")
    parser.add_argument("--budget-min", type=float, default=0.0)
    parser.add_argument("--epochs", type=int, help="override train.epochs (record runs fix epochs)")
    parser.add_argument("--normals", action="store_true",
                        help="with --all: train on BUSI's normal images too")
    parser.add_argument("--config", default="busi", help="recipe: preset or TOML file (default: busi)")
    parser.add_argument("--teacher", action="append", help="with --all: distil this run (repeat: an ensemble)")
    parser.add_argument("--target", default=str(TARGET),
                        help="folder to write the model and inference.json to (default: the package's)")
    args = parser.parse_args(argv)

    if args.ensemble:
        bundle_ensemble([Path(r) for r in args.ensemble], Path(args.data), Path(args.target),
                        tta=not args.no_tta, heldout=args.heldout)
        return 0
    if args.from_run:
        run = Path(args.from_run)
        bundle(run, _seen_by(run) + _distilled([run]), Path(args.target), tta=not args.no_tta)
        return 0

    from bcseg.config import load_config, save_config
    from bcseg.data.dataset import discover
    from bcseg.after_fit import finish_fold
    from bcseg.learn.train import run_fold, training_precision

    kinds = ("benign", "malignant", "normal") if args.normals else ("benign", "malignant")
    cases = [c for c in discover(args.data) if c.label_class in kinds]
    out = Path(args.out)
    overrides = {"train": {"budget_minutes": args.budget_min}}
    if args.epochs:
        overrides["train"]["epochs"] = args.epochs
    if args.teacher:
        overrides["train"]["teacher"] = [str(Path(t).absolute()) for t in args.teacher]
    cfg = load_config(args.config, overrides)
    teacher = None
    if args.teacher:  # segmented once, before anything is written (see bcseg.distil)
        from bcseg import distil
        distil.check_recipe(cfg, args.config)
        models, settings = distil.load_teacher(cfg["train"]["teacher"], None)
        teacher = distil.teacher_probabilities(models, settings, cases, cfg["train"]["teacher"])
        del models
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.toml")
    # Every case in the training pool (fold 1) and none in the test fold 0: the
    # validation split of whole groups still chooses the epoch and the threshold.
    with training_precision(cfg):
        finish_fold(run_fold(cases, {c.id: 1 for c in cases}, 0, cfg, out, teacher=teacher))
    bundle(out, _seen_by(out) + _distilled([out]), Path(args.target), tta=not args.no_tta)
    return 0


def _seen_by(run: Path) -> str:
    """Which BUSI images a run saw, from its fold.json: all of them (an --all run, no
    test images), or all but a test fold (a fold run: a held-out twin)."""
    fold = json.loads((run / "fold.json").read_text(encoding="utf-8"))
    kinds = "benign/malignant/normal" if _has_normals(fold) else "benign/malignant"
    if not fold["test"]:
        return (f"all {len(fold['train']) + len(fold['validation'])} BUSI {kinds} images "
                f"({len(fold['train'])} training, {len(fold['validation'])} validation); "
                "fold 0 included: no BUSI lesion image is unseen by this model")
    return (f"{len(fold['train'])} BUSI {kinds} images for training and {len(fold['validation'])} "
            f"for validation (folds other than {fold['fold']} of folds.csv); the {len(fold['test'])} "
            f"images of fold {fold['fold']} were never seen")


if __name__ == "__main__":
    sys.exit(main())
