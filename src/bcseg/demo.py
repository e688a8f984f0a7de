"""``bcseg demo``: the whole job on the built-in synthetic phantom.

Phantom -> train a small 2D U-Net and a tiny 3D U-Net on training specimens (the
test specimens are held out by group) -> segment the held-out specimens -> evaluate
against each observer, their consensus and each other -> report. Sized to finish
in about 10 minutes on a 2-core CPU.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from bcseg.atomic import require_new
from bcseg.outputs import check_output_folder, claim
from bcseg.phantom import write_phantom

DEMO_SPECIMENS = 10
DEMO_SHAPE = (24, 128, 128)
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
    from bcseg.train import train

    started = time.perf_counter()
    data = out / "phantom"
    write_phantom(data, n=specimens, shape=DEMO_SHAPE, seed=0, truth=True)
    print(f"phantom: {specimens} specimens of {DEMO_SHAPE} in {data}", flush=True)

    overrides_2d = {"train": {"epochs": epochs_2d}} if epochs_2d else None
    train(data, out / "unet2d", config="demo", overrides=overrides_2d, fold=0)
    overrides_3d = json.loads(json.dumps(OVERRIDES_3D))
    if epochs_3d:
        overrides_3d["train"]["epochs"] = epochs_3d
    train(data, out / "unet3d", config="demo", overrides=overrides_3d, fold=0)

    result = {"seconds": round(time.perf_counter() - started, 1),
              "unet2d": _headline(out / "unet2d"), "unet3d": _headline(out / "unet3d"),
              "report": str(out / "unet2d" / "report.html"),
              "report_3d": str(out / "unet3d" / "report.html")}
    return result


def print_summary(result: dict) -> None:
    """Print the demo's headline numbers and where the reports are."""
    for model in ("unet2d", "unet3d"):
        summary = result.get(model) or {}
        refs = summary.get("references", {})
        print(f"\n{model} on {summary.get('n_cases', 0)} held-out specimen(s):")
        for name in ("union", "observer1", "observer2", "staple", "inter-observer"):
            dice = refs.get(name, {}).get("metrics", {}).get("dice")
            if dice:
                label = "observer1 vs observer2 (ceiling)" if name == "inter-observer" else f"vs {name}"
                print(f"  Dice {label:<34} {dice['mean']:.3f} ± {dice['sd']:.3f} "
                      f"(95% CI {dice['ci_low']:.3f}-{dice['ci_high']:.3f})")
        soft = summary.get("pixel_soft_score")
        if soft:
            print(f"  pixel_soft_score (the reference study's 'Dice'; not a Dice) {soft['value']:.4f}")
    print(f"\ndemo finished in {result['seconds']:.0f} s")
    print(f"report: {result['report']}")
    print(f"3D report: {result['report_3d']}")
