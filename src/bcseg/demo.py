"""``bcseg demo``: the whole job on the built-in synthetic phantom.

Phantom -> train a small 2D U-Net and a tiny 3D U-Net on training specimens (the
test specimens are held out by group) -> segment the held-out specimens -> evaluate
against each observer, their consensus and each other -> report.

Sized by FLOPs to finish in about 6 minutes on a 2-core CPU without AVX-512 (the
``demo`` preset's 2D U-Net runs at half resolution behind a strided first
convolution). A time budget per model guards the 10-minute promise on slower or
busy machines: after timing epoch 2, a model trains only the epochs that fit in it,
with its learning-rate schedule fitted to that count. The summary prints the
epochs each model reached, and ``demo.json`` keeps them with the phase times.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from bcseg.atomic import require_new, write_text
from bcseg.data.phantom import write_phantom
from bcseg.outputs import check_output_folder, claim

DEMO_SPECIMENS = 10
DEMO_SHAPE = (24, 128, 128)
# Training-time budgets (minutes): caps, so that with phantom, tuning, prediction and
# reports the demo ends within 10 minutes on a 2-core machine. On a quiet AVX2 machine
# the 2D cap is reached (21 of 24 epochs, 12-14 s each) and make demo takes 7.3 min;
# a 5.5-minute cap took 9 min and did not raise Dice (docs/speed.md).
BUDGET_MINUTES = {"unet2d": 4.5, "unet3d": 2.0}
OVERRIDES_3D = {
    "model": {"ndim": 3, "base_filters": 8, "depth": 3},
    "data": {"size": 64, "patch_depth": 16},
    "train": {"epochs": 15, "batch_size": 2, "learning_rate": 0.003},
}


def _headline(run: Path) -> dict:
    path = run / "summary.json"
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def run_demo(out: str | Path = "demo-run", force: bool = False, epochs_2d: int | None = None,
             epochs_3d: int | None = None, specimens: int = DEMO_SPECIMENS) -> dict:
    """Run the demo into ``out`` and return the headline numbers and paths."""
    out = check_output_folder(out)
    require_new(out, force)
    # --force replaces an earlier demo (files bcseg wrote), never a folder holding others.
    with claim(out, "demo", replace=force):
        return _demo_in(out, epochs_2d, epochs_3d, specimens)


def _demo_in(out: Path, epochs_2d: int | None, epochs_3d: int | None, specimens: int) -> dict:
    from bcseg.after_fit import train_and_evaluate as train

    started = time.perf_counter()
    data = out / "phantom"
    write_phantom(data, n=specimens, shape=DEMO_SHAPE, seed=0, truth=True)
    print(f"phantom: {specimens} specimens of {DEMO_SHAPE} in {data}", flush=True)

    phases = {"phantom": round(time.perf_counter() - started, 1)}
    overrides_3d = json.loads(json.dumps(OVERRIDES_3D))
    for model, overrides, epochs in (("unet2d", {"train": {}}, epochs_2d),
                                     ("unet3d", overrides_3d, epochs_3d)):
        overrides["train"]["budget_minutes"] = BUDGET_MINUTES[model]
        if epochs:
            overrides["train"]["epochs"] = epochs
        begun = time.perf_counter()
        train(data, out / model, config="demo", overrides=overrides, fold=0)
        phases[model] = round(time.perf_counter() - begun, 1)

    result = {"seconds": round(time.perf_counter() - started, 1), "phase_seconds": phases,
              "unet2d": _headline(out / "unet2d"), "unet3d": _headline(out / "unet3d"),
              "epochs": {model: epochs_reached(out / model) for model in BUDGET_MINUTES},
              "report": str(out / "unet2d" / "report.html"),
              "report_3d": str(out / "unet3d" / "report.html")}
    write_text(out / "demo.json", json.dumps(result, indent=1) + "\n")
    return result


def epochs_reached(run: Path) -> dict:
    """Epochs a demo run trained, the epochs it was configured for, and its time budget.

    Read from the run's ``state.json`` and ``config.toml``; ``planned`` is below
    ``configured`` when the time budget cut the run short.
    """
    from bcseg.config import load_config

    state = json.loads((run / "state.json").read_text(encoding="utf-8"))
    train_cfg = load_config(run / "config.toml")["train"]
    return {"trained": state["epoch"], "planned": state.get("epochs_planned", train_cfg["epochs"]),
            "configured": train_cfg["epochs"], "budget_minutes": train_cfg["budget_minutes"],
            "train_seconds": round(state.get("train_seconds", 0.0), 1)}


def print_summary(result: dict) -> None:
    """Print the demo's headline numbers and where the reports are."""
    from bcseg.measure.evaluate import ci_phrase, human_level_lines

    for model in ("unet2d", "unet3d"):
        summary = result.get(model) or {}
        refs = summary.get("references", {})
        print(f"\n{model} on {summary.get('n_cases', 0)} held-out specimen(s):")
        for text in human_level_lines(summary):
            print(f"  human level: model {text}")
        for name in ("union", "observer1", "observer2", "staple", "inter-observer"):
            dice = refs.get(name, {}).get("metrics", {}).get("dice")
            if dice:
                label = "observer1 vs observer2 (ceiling)" if name == "inter-observer" else f"vs {name}"
                print(f"  Dice {label:<34} {dice['mean']:.3f} ± {dice['sd']:.3f} ({ci_phrase(dice)})")
        epochs = result.get("epochs", {}).get(model)
        if epochs:
            cut = epochs["planned"] < epochs["configured"]
            print(f"  trained {epochs['trained']} of {epochs['configured']} epochs in "
                  f"{epochs['train_seconds']:.0f} s" + (
                      f": the {epochs['budget_minutes']:g}-minute time budget cut it short "
                      "(a slow or busy CPU; Dice may be lower)" if cut else
                      f" (time budget {epochs['budget_minutes']:g} min)"))
        soft = summary.get("pixel_soft_score")
        if soft:
            print(f"  pixel_soft_score (the reference study's 'Dice'; not a Dice) {soft['value']:.4f}")
    print(f"\ndemo finished in {result['seconds']:.0f} s")
    print(f"report: {result['report']}")
    print(f"3D report: {result['report_3d']}")
