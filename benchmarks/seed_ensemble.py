"""Does a seed ensemble beat its members? BUSI fold 0 held out.

The members are fold-0 runs of ``benchmarks/busi.py`` with one recipe and one
``train.seed`` but another ``train.member_seed`` each (``benchmarks/configs/r7s1.toml``
is r7's second member): every member trained on all of folds 1-4 with the same
validation split of whole groups, and differs only in its initial weights and in
the samples and augmentation each epoch drew. Unlike a fold ensemble (each member
on three of the four folds, ``benchmarks/ensemble.py``), no member gives up
training images, which is why a fold ensemble of four only drew level with one
model on all four folds.

The script copies the members into ``OUT/ensemble/`` and tunes one threshold,
post-processing and TTA choice on the shared validation split, each validation
image scored on the members' mean probability (:func:`bcseg.after_fit.tune_members`);
the folder then predicts as an ensemble (``bcseg predict --model OUT/ensemble``, and
``benchmarks/shift.py`` and ``bundled_speed.py`` take it too). Each member, with its
own tuned settings, and the ensemble segment fold 0: Dice per lesion image at its
original resolution, per class, the share of missed lesions (Dice < 0.5), the share
of fold 0's normal images left empty, and the ensemble's paired gain over each member
and over their mean (bootstrap 95% CI).

Example (after ``busi.py --config benchmarks/configs/r7s1.toml --epochs 100 --folds 0
--out bench-out/r7s1`` beside the 5-fold run of r7)::

    .venv/bin/python benchmarks/seed_ensemble.py --out bench-out/seed-ens-r7 \\
        --members bench-out/r7/fold_0 bench-out/r7s1/fold_0
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "busi"
sys.path.insert(0, str(ROOT / "benchmarks"))
from ensemble import markdown, paired_gain, score  # noqa: E402  (benchmarks/ensemble.py)
from machine import busi_missing, hardware, write_results  # noqa: E402
TEST_FOLD = 0


def _config_path(run: Path) -> Path:
    """A fold folder's recipe: its own config.toml, else its k-fold run's."""
    from bcseg import rundir

    for folder in (run, run.parent):
        if (folder / rundir.CONFIG_FILE).is_file():
            return folder / rundir.CONFIG_FILE
    raise SystemExit(f"seed_ensemble.py: {run}: no {rundir.CONFIG_FILE} here or above")


def _recipe(cfg: dict) -> dict:
    """A run's recipe without its member seed, augmentation and network: what members
    of one ensemble share. Members may augment differently (r7 beside r10, which draws
    its speckle strength per image) or be other networks (r10 beside r12, instance
    normalisation): that changes what each learns, not which images it trained and was
    tuned on, and diversity is what an ensemble is for."""
    return {**cfg, "augment": {}, "model": {},
            "train": {k: v for k, v in cfg["train"].items() if k != "member_seed"}}


def shared_split(runs: list[Path], script: str = "seed_ensemble.py") -> dict:
    """The members' common fold.json. Refuse members that trained, validated or tested
    on other images, or that are one model twice: the same run, or runs of the same
    recipe, augmentation and seeds (``member_seed`` -1 and 0 train alike), which would
    weigh twice.
    ``script`` names the caller in its refusals."""
    from bcseg import rundir
    from bcseg.config import load_config
    from bcseg.learn.train import draw_seed

    if len(runs) < 2:
        raise SystemExit(f"{script}: an ensemble needs two members or more")
    splits = [json.loads((r / rundir.FOLD_FILE).read_text(encoding="utf-8")) for r in runs]
    recipes = [load_config(_config_path(r)) for r in runs]
    by_seed: dict[tuple, int] = {}  # (draw seed, augmentation) -> the first member with it
    for member, (run, split, cfg) in enumerate(zip(runs, splits, recipes)):
        for key in ("train", "validation", "test"):
            if sorted(split[key]) != sorted(splits[0][key]):
                raise SystemExit(f"{script}: {run}: its {key} images differ from {runs[0]}'s; "
                                 "members of a seed ensemble share train.seed (see train.member_seed)")
        if _recipe(cfg) != _recipe(recipes[0]):
            raise SystemExit(f"{script}: {run}: another recipe than {runs[0]}'s; members of "
                             "a seed ensemble differ only in train.member_seed, [augment] and [model]")
        drawn = (draw_seed(cfg["train"]), json.dumps([cfg["augment"], cfg["model"]], sort_keys=True))
        twin = by_seed.setdefault(drawn, member)  # one run given twice too
        if twin != member:
            raise SystemExit(f"{script}: {run}: the same model as {runs[twin]} (same run, or same "
                             "seeds: member_seed -1 and 0 train alike); give each member once")
    return splits[0]


def write_ensemble(folder: Path, runs: list[Path], cases, cfg) -> None:
    """Copy each run's model into ``folder`` and record the ensemble, tuned on the
    shared validation split, in its inference.json (what ``bcseg ensemble`` writes;
    an earlier ensemble there is replaced)."""
    from bcseg.ensemble import write_ensemble as write

    write(folder, runs, cases, cfg, force=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="BUSI folder with folds.csv")
    parser.add_argument("--members", nargs="+", required=True,
                        help="fold-0 run folders of one recipe with other train.member_seed")
    parser.add_argument("--out", default="bench-out/seed-ensemble")
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from bcseg import rundir
    from bcseg.config import load_config
    from bcseg.data.dataset import discover
    from bcseg.data.splits import folds_from_file
    from bcseg.infer.segment import load_models

    data = Path(args.data)
    if busi_missing(data, "seed_ensemble.py"):
        return 3
    runs = [Path(r) for r in args.members]
    split = shared_split(runs)
    if split["fold"] != TEST_FOLD:
        raise SystemExit(f"seed_ensemble.py: {runs[0]}: tested on fold {split['fold']}, not {TEST_FOLD}")
    cases = discover(data)
    folds = folds_from_file(data / "folds.csv", cases)
    classes = {c.id: c.label_class for c in cases}
    test_ids = set(split["test"])
    test = [c for c in cases if c.id in test_ids]
    normals = [c for c in cases if c.label_class == "normal" and folds[c.id] == TEST_FOLD]
    cfg = load_config(_config_path(runs[0]))

    started = time.perf_counter()
    out = Path(args.out)
    ensemble = out / "ensemble"
    write_ensemble(ensemble, runs, cases, cfg)
    result = {"epochs": cfg["train"]["epochs"], "members": [str(r) for r in runs],
              "ensemble_validation_dice": rundir.read_settings(ensemble / rundir.SETTINGS_FILE)
              .info.get("validation_dice"),
              "member_seeds": [load_config(_config_path(r))["train"]["member_seed"] for r in runs],
              "hardware": hardware(), "models": {}}
    for run in runs:
        models, settings = load_models(run)
        result["models"][f"member {run}"] = score(models, settings, test, normals, classes)
        print(f"{run}: Dice {result['models'][f'member {run}']['dice']:.3f}", flush=True)
    models, settings = load_models(ensemble)
    result["models"]["ensemble"] = score(models, settings, test, normals, classes)
    members = [r for name, r in result["models"].items() if name.startswith("member")]
    result["ensemble_minus_member_mean"], result["gain_ci"] = paired_gain(result["models"]["ensemble"], members)
    result["ensemble_minus_each"] = {name: paired_gain(result["models"]["ensemble"], [r])
                                     for name, r in result["models"].items() if name.startswith("member")}
    result["seconds"] = time.perf_counter() - started
    table = markdown(result) + "\n" + "\n".join(
        f"Ensemble minus {name}: {gain:+.3f} (95% CI {ci[0]:+.3f} to {ci[1]:+.3f})."
        for name, (gain, ci) in result["ensemble_minus_each"].items()) + "\n"
    write_results(out, "results", result, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
