"""What photoacoustic imaging adds: US-only, PA-only and US+PA models on one phantom study.

A ``realistic`` two-channel phantom study (``bcseg phantom --difficulty realistic
--channels us,pa``) is cross-validated by specimen (5 folds) three times with the
same recipe and the same folds: once on the ultrasound channel, once on the
photoacoustic channel and once on both. Every specimen is thus tested once per
modality, by a model that never saw it, and the per-specimen Dice (against the
union of the two observers, the phantom's reference) pairs up across modalities.
The table gives each modality's mean Dice and the paired difference with a
bootstrap 95% CI, over all specimens and over the hard subsets: nearly isoechoic
tumours (``us_contrast`` < 0.3 in ``specimens.csv``) and weak-PA tumours
(``pa_contrast`` < 0.3).

This measures the phantom, not real PA: the phantom's PA contrast is drawn
independently of its ultrasound contrast, so the benchmark shows that bcseg's
multi-channel models use a second channel where it carries the tumour, not how much
a real PA scanner would add.

Examples
--------
    .venv/bin/python benchmarks/modalities.py --out bench-out/modalities
    .venv/bin/python benchmarks/modalities.py --quick          # a plumbing check, minutes
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_flags, write_results  # noqa: E402  (benchmarks/machine.py)

MODALITIES = {"US": ["us"], "PA": ["pa"], "US+PA": ["us", "pa"]}
PAIRS = (("US+PA", "US"), ("US+PA", "PA"), ("PA", "US"))
HARD = {"isoechoic (US contrast < 0.3)": ("us_contrast", 0.3),
        "weak PA (PA contrast < 0.3)": ("pa_contrast", 0.3)}
RECIPE = {  # the demo's 2D recipe at 96 px; fixed epochs, so the CPU does not change it
    "model": {"base_filters": 16, "depth": 4, "stem_stride": 2},
    "data": {"size": 96},
    "train": {"epochs": 12, "batch_size": 8, "learning_rate": 0.002, "k": 5, "budget_minutes": 0.0},
}
QUICK = {"specimens": 6, "shape": (8, 48, 48), "epochs": 1, "k": 2}  # checks the plumbing only
FULL = {"specimens": 20, "shape": (16, 96, 96), "epochs": RECIPE["train"]["epochs"], "k": 5}


def specimen_dice(run: Path) -> dict[str, float]:
    """Each test specimen's Dice against the observers' union, over a k-fold run."""
    scores = {}
    for metrics in sorted(run.glob("fold_*/metrics.csv")):
        with open(metrics, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                if row["level"] == "specimen" and row["reference"] == "union":
                    scores[row["case"]] = float(row["dice"])
    return scores


def paired(a: dict, b: dict, ids: list[str]) -> dict:
    from bcseg.measure.metrics import summarise

    diff = summarise([a[i] - b[i] for i in ids])
    return {"n": len(ids), "mean": diff["mean"], "ci_low": diff["ci_low"], "ci_high": diff["ci_high"]}


def table(results: dict) -> str:
    subsets = results["subsets"]
    lines = ["| specimens | n | " + " | ".join(f"{m} Dice" for m in MODALITIES) + " | "
             + " | ".join(f"{a} − {b} (95% CI)" for a, b in PAIRS) + " |",
             "|---|---|" + "---|" * (len(MODALITIES) + len(PAIRS))]
    for name, ids in subsets.items():
        means = [np.mean([results["dice"][m][i] for i in ids]) if ids else np.nan for m in MODALITIES]
        cells = []
        for a, b in PAIRS:
            d = results["paired"][name][f"{a} - {b}"]
            ci = "n < 5" if not np.isfinite(d["ci_low"]) else f"{d['ci_low']:+.3f} to {d['ci_high']:+.3f}"
            cells.append(f"{d['mean']:+.3f} ({ci})" if ids else "n/a")
        lines.append(f"| {name} | {len(ids)} | " + " | ".join(f"{v:.3f}" for v in means) + " | "
                     + " | ".join(cells) + " |")
    lines += ["", f"{results['specimens']} realistic phantom specimens {tuple(results['shape'])}, "
              f"{results['k']}-fold CV by specimen, {results['epochs']} epochs per model, 2D U-Net (16 filters, "
              f"stride-2 stem, {RECIPE['data']['size']} px). Dice per specimen against the union of "
              f"the two observers. CPU: {results['cpu']}, {os.cpu_count()} cores; wall time "
              f"{results['seconds'] / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench-out/modalities")
    parser.add_argument("--quick", action="store_true",
                        help="6 tiny specimens, 2 folds, 1 epoch: a plumbing check of a few minutes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from bcseg.after_fit import train_and_evaluate
    from bcseg.data.phantom import ATTRIBUTES_FILE, write_phantom

    plan = QUICK if args.quick else FULL
    out = Path(args.out)
    started = time.perf_counter()
    data = out / "phantom"
    if not (data / ATTRIBUTES_FILE).is_file():
        write_phantom(data, n=plan["specimens"], shape=plan["shape"], seed=args.seed, truth=True,
                      difficulty="realistic", channels=("us", "pa"))
    dice = {}
    for name, channels in MODALITIES.items():
        run = out / name.replace("+", "_")
        if not (run / "folds_summary.json").is_file():
            overrides = json.loads(json.dumps(RECIPE))
            overrides["data"]["channels"] = channels
            overrides["train"].update(epochs=plan["epochs"], k=plan["k"])
            train_and_evaluate(data, run, overrides=overrides, fold="all", report=False, force=True)
        dice[name] = specimen_dice(run)
        print(f"{name}: mean Dice {np.mean(list(dice[name].values())):.3f} over {len(dice[name])} specimens",
              flush=True)
    with open(data / ATTRIBUTES_FILE, newline="", encoding="utf-8") as handle:
        attributes = {row["id"]: row for row in csv.DictReader(handle)}
    ids = sorted(set.intersection(*(set(d) for d in dice.values())))
    subsets = {"all": ids}
    for label, (key, limit) in HARD.items():
        subsets[label] = [i for i in ids if float(attributes[i][key]) < limit]
    results = {"specimens": plan["specimens"], "shape": plan["shape"], "epochs": plan["epochs"], "k": plan["k"],
               "cpu": cpu_flags(), "dice": dice, "subsets": subsets,
               "paired": {s: {f"{a} - {b}": paired(dice[a], dice[b], chosen) for a, b in PAIRS}
                          for s, chosen in subsets.items()}}
    results["seconds"] = time.perf_counter() - started
    write_results(out, "modalities", results, table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
