"""``bcseg demo``: the whole job on the built-in synthetic phantom.

Phantom -> train a small 2D U-Net and a tiny 3D U-Net on training specimens (the
test specimens are held out by group) -> segment the held-out specimens -> evaluate
against each observer, their consensus and each other -> report. Then the same for
a two-channel model (ultrasound + photoacoustic) on the ``realistic`` phantom, whose
report shows each channel beside the overlay.

Sized by FLOPs to finish in about 6 minutes on a 2-core CPU without AVX-512 (the
``demo`` preset's 2D U-Net is narrow: 8 filters at full resolution). A time budget
per model guards the 10-minute promise on slower or busy machines: after timing
epoch 2, a model trains only the epochs that fit in it, with its learning-rate
schedule fitted to that count. The summary prints the epochs each model reached,
and ``demo.json`` keeps them with the phase times.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from bcseg.atomic import write_text
from bcseg.data.phantom import write_phantom
from bcseg.outputs import check_output_folder, claim, require_new_folder

DEMO_SPECIMENS = 10
DEMO_SHAPE = (24, 128, 128)
PA_SHAPE = (16, 96, 96)  # the realistic two-channel phantom: smaller, so it adds ~1.5 minutes
# Training-time budgets (minutes): caps, so that with phantom, tuning, prediction and
# reports the demo ends within 10 minutes on a 2-core machine. The 2D model's steps
# take 0.85x the time of the stride-2 model measured on a quiet AVX2 machine (12-14 s
# an epoch there, 21 of 24 epochs within the cap), so about 22-24 epochs fit; its
# Dice holds from 22 epochs on (docs/speed.md).
BUDGET_MINUTES = {"unet2d": 4.5, "unet3d": 1.5, "unet2d_us_pa": 1.25}
# The 3D and two-channel models keep the stride-2 first convolution of their own sizing.
OVERRIDES_3D = {
    "model": {"ndim": 3, "base_filters": 8, "depth": 3, "stem_stride": 2},
    "data": {"size": 64, "patch_depth": 16},
    "train": {"epochs": 15, "batch_size": 2, "learning_rate": 0.003},
}
OVERRIDES_US_PA = {"model": {"base_filters": 16, "stem_stride": 2},
                   "data": {"size": 96, "channels": ["us", "pa"]}, "train": {"epochs": 16}}
TITLES = {"unet2d": "", "unet3d": "", "unet2d_us_pa": " of the realistic phantom, ultrasound + photoacoustic"}
# Each model: the phantom it trains on, and its settings over the ``demo`` preset.
MODELS = {"unet2d": ("phantom", {}), "unet3d": ("phantom", OVERRIDES_3D),
          "unet2d_us_pa": ("phantom_us_pa", OVERRIDES_US_PA)}


def _headline(run: Path) -> dict:
    path = run / "summary.json"
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def run_demo(out: str | Path = "demo-run", force: bool = False, epochs_2d: int | None = None,
             epochs_3d: int | None = None, specimens: int = DEMO_SPECIMENS) -> dict:
    """Run the demo into ``out`` and return the headline numbers and paths."""
    out = check_output_folder(out, command="demo")
    require_new_folder(out, force, "demo")
    # --force replaces an earlier demo (files bcseg wrote), never a folder holding others.
    # All or nothing: a demo has no --resume, so an interrupted one leaves no half demo
    # that the next 'make demo' would refuse as a result (with --force: the old one back).
    with claim(out, "demo", replace=force, new=True, all_or_nothing=True):
        return _demo_in(out, epochs_2d, epochs_3d, specimens)


def _demo_in(out: Path, epochs_2d: int | None, epochs_3d: int | None, specimens: int) -> dict:
    from bcseg.after_fit import train_and_evaluate as train

    started = time.perf_counter()
    write_phantom(out / "phantom", n=specimens, shape=DEMO_SHAPE, seed=0, truth=True)
    write_phantom(out / "phantom_us_pa", n=specimens, shape=PA_SHAPE, seed=1, truth=True,
                  difficulty="realistic", channels=("us", "pa"))
    print(f"phantoms: {specimens} easy specimens of {DEMO_SHAPE} in {out / 'phantom'}; "
          f"{specimens} realistic ultrasound + photoacoustic ones of {PA_SHAPE} in "
          f"{out / 'phantom_us_pa'}", flush=True)

    phases = {"phantom": round(time.perf_counter() - started, 1)}
    for model, (phantom, settings) in MODELS.items():
        overrides = json.loads(json.dumps(settings))  # a copy: the table stays as it is
        overrides.setdefault("train", {})["budget_minutes"] = BUDGET_MINUTES[model]
        epochs = epochs_3d if model == "unet3d" else epochs_2d
        if epochs:
            overrides["train"]["epochs"] = epochs
        begun = time.perf_counter()
        train(out / phantom, out / model, config="demo", overrides=overrides, fold=0)
        phases[model] = round(time.perf_counter() - begun, 1)

    result = {"seconds": round(time.perf_counter() - started, 1), "phase_seconds": phases,
              **{model: _headline(out / model) for model in MODELS},
              "epochs": {model: epochs_reached(out / model) for model in MODELS},
              "reports": {model: str(out / model / "report.html") for model in MODELS}}
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

    for model in MODELS:
        summary = result.get(model) or {}
        refs = summary.get("references", {})
        print(f"\n{model} on {summary.get('n_cases', 0)} held-out specimen(s){TITLES[model]}:")
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
    for model, report in result["reports"].items():
        print(f"report ({model}): {report}")
