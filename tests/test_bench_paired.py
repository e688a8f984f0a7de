"""benchmarks/paired.py: two evaluations paired by case, checked by hand."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import paired  # noqa: E402

HEADER = ["case", "reference", "level", "slice", "dice", "hd95"]


def _metrics(folder: Path, rows, header=HEADER) -> Path:
    folder.mkdir()
    with open(folder / "metrics.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return folder


def test_differences_are_paired_by_case_and_unmatched_cases_counted(tmp_path, capsys):
    a = _metrics(tmp_path / "a", [["x1", "reference", "image", "", 0.5, 3],
                                  ["x2", "reference", "image", "", 0.7, 2],
                                  ["x3", "reference", "image", "", 0.9, 1],
                                  ["x4", "reference", "image", "", 0.2, "inf"],
                                  ["only_a", "reference", "image", "", 0.1, 1],
                                  ["x1", "reference", "slice", "0", 0.0, 9]])  # a slice row: ignored
    b = _metrics(tmp_path / "b", [["x3", "reference", "image", "", 0.8, 1],   # rows in another order
                                  ["x1", "reference", "image", "", 0.6, 2],
                                  ["x2", "reference", "image", "", 0.9, 2],
                                  ["x4", "reference", "image", "", 0.6, 4]])
    result = paired.compare(paired.read_scores(a, "dice", None), paired.read_scores(b, "dice", None),
                            n_boot=200)
    # x1 +0.1, x2 +0.2, x3 -0.1, x4 +0.4: mean 0.15 by hand
    assert result["n_paired"] == 4 and result["n_only_a"] == 1 and result["n_only_b"] == 0
    assert result["delta"]["mean"] == pytest.approx(0.15)
    assert (result["b_better"], result["a_better"], result["ties"]) == (3, 1, 0)
    assert result["mean_a"] == pytest.approx(0.575) and result["mean_b"] == pytest.approx(0.725)

    hd = paired.compare(paired.read_scores(a, "hd95", None), paired.read_scores(b, "hd95", None),
                        n_boot=200)
    assert hd["n_paired"] == 3 and hd["n_not_finite"] == 1      # x4's infinite HD95 left out
    assert hd["delta"]["mean"] == pytest.approx((-1 + 0 + 0) / 3)

    assert paired.main([str(a), str(b), "--boot", "200"]) == 0
    out = capsys.readouterr().out
    assert "B - A: +0.150" in out and "left out: 1 only in A" in out


def test_a_file_scoring_several_observers_needs_one_chosen(tmp_path):
    a = _metrics(tmp_path / "a", [["x1", "observer1", "image", "", 0.5, 1],
                                  ["x1", "observer2", "image", "", 0.7, 1]])
    with pytest.raises(SystemExit, match="choose one with --reference"):
        paired.read_scores(a, "dice", None)
    assert paired.read_scores(a, "dice", "observer2") == {"x1": 0.7}


def test_an_ensembles_results_pair_with_a_run(tmp_path, capsys):
    """A student paired with its teacher ensemble, which seed_ensemble.py scores per
    image in results.json rather than in a metrics.csv."""
    run = _metrics(tmp_path / "student", [["x1", "reference", "image", "", 0.5, 3],
                                          ["x2", "reference", "image", "", 0.9, 1]])
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "results.json").write_text(json.dumps({"models": {
        "member a": {"per_image": {"x1": 0.0, "x2": 0.0}},
        "ensemble": {"per_image": {"x1": 0.6, "x2": 0.6}}}}))
    scores = paired.read_scores(tmp_path / "teacher", "dice", None)
    assert scores == {"x1": 0.6, "x2": 0.6}  # the ensemble's, not a member's
    result = paired.compare(scores, paired.read_scores(run, "dice", None), n_boot=200)
    assert result["delta"]["mean"] == pytest.approx((-0.1 + 0.3) / 2)
    with pytest.raises(SystemExit, match="Dice per image only"):
        paired.read_scores(tmp_path / "teacher" / "results.json", "hd95", None)


def test_two_tied_pairs_say_why_there_is_no_ci_or_test(tmp_path, capsys):
    # Two images, the same Dice in both runs: the line read "95% CI +nan to +nan ...;
    # Wilcoxon signed-rank p = nan". With fewer than 5 pairs bcseg gives no CI ("n too
    # small"), and with every difference 0 there is no signed rank to test.
    rows = [["x1", "reference", "image", "", 0.5, 1], ["x2", "reference", "image", "", 0.7, 2]]
    a, b = _metrics(tmp_path / "a", rows), _metrics(tmp_path / "b", rows)
    assert paired.main([str(a), str(b), "--boot", "200", "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "nan" not in out
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    saved = json.loads((tmp_path / "r.json").read_text(), parse_constant=refuse)  # NaN was written
    assert saved["wilcoxon_p"] is None and saved["delta"]["ci_low"] is None
    assert "B - A: +0.000 (no CI: n too small" in out and "every pair is tied" in out
    assert "2 ties" in out


def test_a_lower_is_better_metric_counts_the_smaller_value_as_the_win(tmp_path, capsys):
    # HD95: B's boundary is nearer on x1 (2 against 3 mm) and x2 (1 against 4), further on
    # x3 (5 against 1). B wins two images, A one; the count read the other way round.
    a = _metrics(tmp_path / "a", [["x1", "reference", "image", "", 0.5, 3],
                                  ["x2", "reference", "image", "", 0.5, 4],
                                  ["x3", "reference", "image", "", 0.5, 1]])
    b = _metrics(tmp_path / "b", [["x1", "reference", "image", "", 0.5, 2],
                                  ["x2", "reference", "image", "", 0.5, 1],
                                  ["x3", "reference", "image", "", 0.5, 5]])
    assert paired.main([str(a), str(b), "--metric", "hd95", "--boot", "200"]) == 0
    out = capsys.readouterr().out
    assert "B - A: +0.000" in out and "B better on 2 images, A on 1, 0 ties" in out
    # A column with no better side (a signed volume difference, the unit) is refused by name,
    # not counted as if larger were better or failed as float('mm').
    for column in ("rel_volume_diff", "unit"):
        with pytest.raises(SystemExit, match=f"--metric {column}: is no score"):
            paired.main([str(a), str(b), "--metric", column])


def test_json_never_replaces_an_input_and_refuses_a_folder(tmp_path):
    rows = [["x1", "reference", "image", "", 0.5, 1], ["x2", "reference", "image", "", 0.7, 2]]
    a = _metrics(tmp_path / "a", rows)
    b = _metrics(tmp_path / "b", [["x1", "reference", "image", "", 0.6, 1],
                                  ["x2", "reference", "image", "", 0.9, 2]])
    before = (a / "metrics.csv").read_bytes()
    # The evaluation just read was overwritten by the JSON result.
    with pytest.raises(SystemExit, match="metrics.csv: is an input of this comparison"):
        paired.main([str(a), str(b), "--boot", "200", "--json", str(a / "metrics.csv")])
    assert (a / "metrics.csv").read_bytes() == before
    with pytest.raises(SystemExit, match="is a folder; give --json a file name"):
        paired.main([str(a), str(b), "--boot", "200", "--json", str(b)])
    assert sorted(p.name for p in b.iterdir()) == ["metrics.csv"]


def test_distances_in_two_units_are_not_paired(tmp_path):
    """HD95 in mm (images with spacing) paired with HD95 in voxels (the same images saved
    without it): 'B - A' printed a difference of no unit at all."""
    header = [*HEADER, "unit"]
    a = _metrics(tmp_path / "a", [["x1", "reference", "image", "", 0.5, 2.0, "mm"],
                                  ["x2", "reference", "image", "", 0.6, 1.0, "mm"]], header)
    b = _metrics(tmp_path / "b", [["x1", "reference", "image", "", 0.5, 8.0, "voxel"],
                                  ["x2", "reference", "image", "", 0.7, 4.0, "voxel"]], header)
    with pytest.raises(SystemExit, match="hd95 of .* is in mm, of .* in voxel"):
        paired.main([str(a), str(b), "--metric", "hd95", "--boot", "200"])
    assert paired.main([str(a), str(b), "--boot", "200"]) == 0  # Dice has no unit
