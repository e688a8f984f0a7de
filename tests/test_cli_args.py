"""Command-line values that were dropped or taken for something else without a word.

Each refusal must be one line on stderr naming the flag, exit 2 (usage), before any
output exists. Real phantom data, the real command line in this process.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bcseg.cli import main


def refused(capsys, argv: list, flag: str) -> str:
    """Run ``bcseg ARGV``; assert exit 2 and one error line naming ``flag``."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:  # argparse's refusal, before the command runs
        main([str(a) for a in argv])
    code = stop.value.code
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1, (code, out, err)
    assert lines[0].startswith("bcseg: error: ") and flag in lines[0], err
    return lines[0]


@pytest.mark.parametrize("argv, flag", [
    # --folds-file '' was dropped: the folds came from kfold_by_group instead
    (["split", "{data}", "--out", "{out}/s.json", "--folds-file", ""], "--folds-file"),
    (["export-nnunet", "{data}", "{out}", "--dataset-id", "1", "--name", "x", "--folds-file", ""],
     "--folds-file"),
    (["split", "{data}", "--out", "{out}/s.json", "--folds-file="], "--folds-file"),
    # --observer '' and --init '' were dropped: the recipe's union, a model from scratch
    (["train", "{data}", "--out", "{out}", "--epochs", "1", "--observer", ""], "--observer"),
    (["train", "{data}", "--out", "{out}", "--epochs", "1", "--init", " "], "--init"),
    # Path('') is the current folder: checked, or loaded as the model
    (["check", ""], "data"),
    (["predict", "{data}/images", "--model", "", "--out", "{out}"], "--model"),
    (["predict", "{data}/images", "--postprocess", "", "--out", "{out}"], "--postprocess"),
    (["evaluate", "--pred", "", "--truth", "{data}", "--out", "{out}"], "--pred"),
])
def test_an_empty_value_is_refused_naming_its_flag(tmp_path, capsys, phantom_root, argv, flag):
    out = tmp_path / "out"
    argv = [a.format(data=phantom_root, out=out) for a in argv]
    line = refused(capsys, argv, flag)
    assert "empty" in line, line
    assert not out.exists()
