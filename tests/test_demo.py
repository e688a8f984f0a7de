"""bcseg demo: refuses to delete what is not a demo run, and runs end to end."""

from __future__ import annotations

import json

import pytest

from bcseg.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_demo_force_never_deletes_a_folder_that_is_not_a_demo(tmp_path, capsys):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    assert main(["demo", "--out", str(tmp_path), "--force"]) == 2
    assert "precious.txt: was not written by bcseg" in capsys.readouterr().err
    assert precious.read_text() == "keep me"
    assert main(["demo", "--out", str(tmp_path)]) == 2  # without --force: already holds a result
    assert precious.read_text() == "keep me"


def test_an_interrupted_demo_is_one_line_and_leaves_no_half_demo(tmp_path, capsys, monkeypatch):
    """Ctrl-C or SIGTERM in a demo's training printed a traceback (train's Interrupted
    was caught by train's command only) and left half a demo that the next run refused."""
    import bcseg.after_fit
    import bcseg.demo
    from bcseg.learn.train import Interrupted

    def stopped(*args, **kwargs):
        raise Interrupted("stopped during epoch 1, which is discarded", 0)

    monkeypatch.setattr(bcseg.after_fit, "train_and_evaluate", stopped)
    monkeypatch.setattr(bcseg.demo, "DEMO_SHAPE", (8, 24, 24))  # the phantoms, quickly
    monkeypatch.setattr(bcseg.demo, "PA_SHAPE", (8, 24, 24))
    code = main(["demo", "--out", str(tmp_path / "d")])
    err = capsys.readouterr().err
    assert code == 130 and err == "bcseg: error: interrupted\n", err
    assert not (tmp_path / "d").exists()


@pytest.mark.slow
def test_demo_runs_end_to_end_with_one_epoch_each(tmp_path, capsys, monkeypatch):
    """The whole job on the phantom; one epoch per model on thinner specimens (the same
    ten, so the same split) keeps it under a minute. `make demo` runs the full size."""
    import bcseg.demo

    monkeypatch.setattr(bcseg.demo, "DEMO_SHAPE", (16, 96, 96))  # the 3D patch is 16 deep
    monkeypatch.setattr(bcseg.demo, "PA_SHAPE", (8, 64, 64))
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs-2d", "1", "--epochs-3d", "1"]) == 0
    printed = capsys.readouterr().out
    assert "unet2d on 2 held-out specimen(s)" in printed and "report (unet2d):" in printed
    assert "unet2d_us_pa on 2 held-out specimen(s) of the realistic phantom" in printed
    assert "trained 1 of 1 epochs" in printed
    assert json.loads((out / "demo.json").read_text())["epochs"]["unet3d"]["trained"] == 1
    two = json.loads((out / "unet2d_us_pa" / "inference.json").read_text())
    assert two["channel_names"] == ["us", "pa"]
    for model in ("unet2d", "unet3d", "unet2d_us_pa"):
        summary = json.loads((out / model / "summary.json").read_text())
        assert summary["n_cases"] == 2 and summary["level"] == "specimen"
        assert "inter-observer" in summary["references"]
        html = (out / model / "report.html").read_text()
        assert "data:image/png;base64," in html
    # The two-channel report shows each channel beside the overlay.
    assert (out / "unet2d_us_pa" / "examples_us.png").is_file()
    assert (out / "unet2d_us_pa" / "examples_pa.png").is_file()


def test_demo_training_fits_its_flop_budget():
    """The demo's training work stays within what a 2-core AVX2 CPU does in ~4 minutes.

    A training step is ~3x the forward FLOPs. Fold 0 of the demo trains on 6
    specimens of 24 slices (144 slices per 2D epoch) and draws 4 patches per
    training volume per 3D epoch (24). At 30 GFLOP/s, about what TensorFlow reaches
    on the default 2D model on 2 AVX2 cores, 8 TFLOP are 4.4 minutes. The preset
    before this bound (stride-1 U-Net, 30 epochs) needed 21.7 TFLOP: 20 minutes there.
    """
    from bcseg.config import load_config
    from bcseg.demo import DEMO_SHAPE, OVERRIDES_3D, OVERRIDES_US_PA, PA_SHAPE
    from bcseg.learn.models import conv_flops
    from bcseg.learn.train import build_model

    cfg2, cfg3 = load_config("demo"), load_config("demo", OVERRIDES_3D)
    size, patch = cfg2["data"]["size"], (cfg3["data"]["patch_depth"],) + (cfg3["data"]["size"],) * 2
    work_2d = 3 * conv_flops(build_model(cfg2), (size, size)) * 6 * DEMO_SHAPE[0] * cfg2["train"]["epochs"]
    work_3d = 3 * conv_flops(build_model(cfg3), patch) * 24 * cfg3["train"]["epochs"]
    cfg_pa = load_config("demo", OVERRIDES_US_PA)
    pa = cfg_pa["data"]["size"]
    model_pa = build_model(cfg_pa, in_channels=2)
    work_pa = 3 * conv_flops(model_pa, (pa, pa)) * 6 * PA_SHAPE[0] * cfg_pa["train"]["epochs"]
    assert work_2d + work_3d + work_pa <= 9e12, (work_2d / 1e12, work_3d / 1e12, work_pa / 1e12)


def test_epochs_reached_reports_a_budget_cut(tmp_path):
    from bcseg.config import load_config, save_config
    from bcseg.demo import epochs_reached

    save_config(load_config("demo", {"train": {"budget_minutes": 4.5}}), tmp_path / "config.toml")
    (tmp_path / "state.json").write_text(json.dumps({"epoch": 17, "epochs_planned": 17,
                                                      "train_seconds": 268.04}))
    assert epochs_reached(tmp_path) == {"trained": 17, "planned": 17, "configured": 24,
                                        "budget_minutes": 4.5, "train_seconds": 268.0}
