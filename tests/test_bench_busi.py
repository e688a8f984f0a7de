"""benchmarks/busi.py on a tiny BUSI-layout folder: a fold cut off before it finished
continues with --resume instead of being trained again with --force."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import busi  # noqa: E402
from bcseg.errors import UsageError  # noqa: E402
from test_robustness import TINY_TRAINING  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:.*have no spacing:UserWarning")]  # PNGs have none

# BUSI has one annotation per image, and every lesion image holds a lesion
TINY_TOML = TINY_TRAINING.replace("epochs = 50", "epochs = 2").replace(
    "size = 32", 'size = 32\nobserver = "reference"\ntumour_fraction = 0.0')


def _tiny_busi(root: Path) -> Path:
    """BUSI's layout (class folders, 'NAME_mask.png', folds.csv): 10 lesion images, two per
    fold, and 2 normal images of fold 0, 40 x 48 px with a bright blob where the mask is."""
    rng = np.random.default_rng(0)
    rows = ["image,class,group,fold"]
    names = [("benign", i) for i in range(1, 7)] + [("malignant", i) for i in range(1, 5)]
    for n, (label, i) in enumerate(names + [("normal", 1), ("normal", 2)]):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        image = rng.integers(20, 90, (40, 48)).astype(np.uint8)
        mask = np.zeros((40, 48), np.uint8)
        if label != "normal":
            mask[10 + i:22 + i, 12 + i:26 + i] = 255
            image[mask > 0] = 200
        Image.fromarray(image).save(folder / f"{label} ({i}).png")
        Image.fromarray(mask).save(folder / f"{label} ({i})_mask.png")
        fold = n % 5 if label != "normal" else 0
        rows.append(f"{label}/{label} ({i}).png,{label},{n},{fold}")
    (root / "folds.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


def test_a_fold_cut_off_before_it_finished_is_resumed_not_refused(tmp_path):
    data = _tiny_busi(tmp_path / "busi")
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_TOML, encoding="utf-8")
    out = tmp_path / "bench"
    command = ["--data", str(data), "--config", str(config), "--folds", "0", "--out", str(out)]
    assert busi.main(command) == 0
    run = out / "fold_0"
    first = json.loads((run / "fold_result.json").read_text(encoding="utf-8"))
    assert first["n_test"] == 2 and first["epochs"] == 2
    # Cut off while its test fold was scored: no result, no inference settings yet.
    (run / "fold_result.json").unlink()
    (run / "inference.json").unlink()
    with pytest.raises(UsageError, match="resume"):  # the run is not thrown away unasked
        busi.main(command)
    assert busi.main([*command, "--resume"]) == 0
    again = json.loads((run / "fold_result.json").read_text(encoding="utf-8"))
    assert again["epochs"] == 2  # finished, not trained further or from scratch
    assert json.loads((run / "state.json").read_text(encoding="utf-8"))["epoch"] == 2
    assert (run / "inference.json").is_file()
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["folds"]["0"]["n_test"] == 2


def test_force_and_resume_are_exclusive(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        busi.main(["--data", str(tmp_path), "--force", "--resume"])
    assert stop.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
