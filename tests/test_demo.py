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


@pytest.mark.slow
def test_demo_runs_end_to_end_with_one_epoch_each(tmp_path, capsys):
    """The whole job on the phantom; one epoch per model keeps it to about a minute."""
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs-2d", "1", "--epochs-3d", "1"]) == 0
    printed = capsys.readouterr().out
    assert "unet2d on 2 held-out specimen(s)" in printed and "report:" in printed
    for model in ("unet2d", "unet3d"):
        summary = json.loads((out / model / "summary.json").read_text())
        assert summary["n_cases"] == 2 and summary["level"] == "specimen"
        assert "inter-observer" in summary["references"]
        html = (out / model / "report.html").read_text()
        assert "data:image/png;base64," in html
