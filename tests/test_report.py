"""Plots and the self-contained HTML report, from real files."""

from __future__ import annotations

import base64
import html
import json
import re

import numpy as np
import pytest
from matplotlib.image import imread

from bcseg.data import io
from bcseg.data.cases import read_case_masks
from bcseg.data.dataset import discover
from bcseg.errors import DataError
from bcseg.measure.evaluate import ceiling_table, evaluate
from bcseg.data.phantom import write_phantom
from bcseg.report.html import (build_report, choose_examples, plot_case_metrics, plot_examples,
                          plot_history)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HISTORY = """epoch,dice,iou,loss,lr,val_dice,val_iou,val_loss
0,0.20,0.12,0.90,0.001,0.15,0.10,0.95
1,0.40,0.30,0.70,0.001,0.35,0.25,0.80
2,0.55,0.40,0.50,0.0005,0.50,0.36,0.62
"""


def is_png(path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


# --------------------------------------------------------------------------- history

def test_plot_history_with_one_row(tmp_path):
    csv_path = tmp_path / "history.csv"
    csv_path.write_text("epoch,loss,dice,val_loss,val_dice\n0,0.8,0.3,0.9,0.2\n")
    written = plot_history(csv_path, tmp_path / "plots")
    assert [p.name for p in written] == ["loss.png", "dice.png"]
    assert all(is_png(p) for p in written)


def test_plot_history_with_missing_columns_and_cells(tmp_path):
    csv_path = tmp_path / "history.csv"
    csv_path.write_text("loss,val_loss\n0.9,\n0.7,0.8\n")  # no epoch, no Dice, an empty cell
    assert [p.name for p in plot_history(csv_path, tmp_path)] == ["loss.png"]
    csv_path.write_text("epoch,loss\n")  # header only: the first epoch is not done yet
    assert plot_history(csv_path, tmp_path / "none") == []
    with pytest.raises(DataError, match="not found"):
        plot_history(tmp_path / "missing.csv", tmp_path)


# --------------------------------------------------------------------------- examples

def colour_centroids(png):
    """Mean (x, y) of the orange (prediction) and blue (truth) pixels, as fractions."""
    rgb = imread(png)[..., :3].astype(float)
    red_minus_blue = rgb[..., 0] - rgb[..., 2]
    orange, blue = red_minus_blue > 0.15, red_minus_blue < -0.15
    h, w = red_minus_blue.shape
    centre = lambda m: (np.argwhere(m)[:, 1].mean() / w, np.argwhere(m)[:, 0].mean() / h)
    return orange, blue, centre


def test_prediction_column_is_drawn_from_the_prediction(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (40, 40))
    truth = np.zeros((40, 40), bool)
    truth[4:12, 8:32] = True                 # top of the image
    pred = np.zeros((40, 40), bool)
    pred[28:36, 8:32] = True                 # bottom: no overlap with the truth
    png = plot_examples([("case", image, truth, pred)], tmp_path / "ex.png", n=1, worst=0)
    orange, blue, centre = colour_centroids(png)
    assert orange.sum() > 100 and blue.sum() > 100
    (ox, oy), (bx, by) = centre(orange), centre(blue)
    # Prediction in the third column, truth in the second ...
    assert np.argwhere(orange)[:, 1].min() > 0.6 * orange.shape[1]
    assert np.argwhere(blue)[:, 1].max() < 0.7 * blue.shape[1]
    assert ox > bx
    # ... and the prediction column shows the prediction (bottom), not the truth (top).
    assert oy - by > 0.2
    # An empty prediction leaves no prediction colour at all.
    png = plot_examples([("case", image, truth, np.zeros_like(pred))], tmp_path / "ex2.png", n=1, worst=0)
    orange, blue, _ = colour_centroids(png)
    assert orange.sum() == 0 and blue.sum() > 100


def test_examples_choose_tumour_slices_and_worst_cases():
    shape = (8, 16, 16)
    truth, pred, image = np.zeros(shape, bool), np.zeros(shape, bool), np.zeros(shape)
    truth[3, 4:8, 4:8] = True
    pred[5, 4:8, 4:8] = True
    good = truth.copy()
    pairs = [("bad", image, truth, pred), ("good", image, truth, good)]
    rows = choose_examples(pairs, n=10, seed=0, worst=1)
    assert rows[-1] == ("bad", 3, "worst")   # Dice 0; a slice of largest disagreement (3 or 5)
    randoms = sorted((c, z) for c, z, kind in rows if kind == "random")
    assert randoms == [("bad", 5), ("good", 3)]  # only slices with tumour; none shown twice
    assert choose_examples(pairs, n=1, seed=4, worst=0) == choose_examples(pairs, n=1, seed=4, worst=0)
    with pytest.raises(ValueError, match="shape"):
        choose_examples([("x", image, truth, pred[:4])])


# --------------------------------------------------------------------------- report

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder: history.csv, an evaluation of phantom predictions, a margins CSV."""
    root = tmp_path_factory.mktemp("run")
    write_phantom(root / "data", n=3, shape=(16, 40, 40))
    cases = discover(root / "data")
    for i, case in enumerate(cases):
        masks = read_case_masks(case)
        pred = [masks["observer1"], np.zeros_like(masks["observer1"]), masks["observer2"]][i]
        io.write_mask(root / "pred" / f"{case.id}_mask.tif", pred)
    evaluate(root / "pred", cases, root / "eval", n_boot=200)
    (root / "history.csv").write_text(HISTORY)
    (root / "margins").mkdir()
    (root / "margins" / "specimen_000_margins.csv").write_text(
        "case,distance_mm,closest_face,ink_on_tumour,close_margin\nspecimen_000,1.75,posterior,False,True\n")
    return root


def test_build_report_is_self_contained(run_dir):
    path = build_report(run_dir, title="Study <A> & B")
    assert path == run_dir / "report.html"
    text = path.read_text(encoding="utf-8")
    assert 'src="http' not in text and "<link" not in text and "<script" not in text
    sources = re.findall(r'<img[^>]*\ssrc="([^"]*)"', text)
    assert len(sources) == 4  # loss, dice, per-case metrics, examples
    assert len(re.findall(r"<img", text)) == len(sources)
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert "Study &lt;A&gt; &amp; B" in text and "Study <A>" not in text
    for name in ("loss.png", "dice.png"):
        assert is_png(run_dir / name)
    for name in ("case_metrics.png", "examples.png"):
        assert is_png(run_dir / "eval" / name)


def test_report_holds_the_numbers(run_dir):
    text = build_report(run_dir, out=run_dir / "out").read_text(encoding="utf-8")
    summary = json.loads((run_dir / "eval" / "summary.json").read_text())
    for row in ceiling_table(summary):
        for key in ("comparison", "dice", "dice_median", "dice_ci", "hd95", "assd"):
            assert html.escape(row[key]) in text, (row["comparison"], key)
    assert "observer1 vs observer2 (ceiling)" in text and 'class="ceiling"' in text
    assert "How to read this report" in text
    assert "pixel_soft_score" in text and "NOT the Dice coefficient" in text
    soft = summary["pixel_soft_score"]
    assert f"{soft['value']:.3f}" in text and f"{soft['dice_mean']:.3f}" in text
    assert "specimen_002" in text  # the per-case table
    assert "Surgical margins" in text and "posterior" in text and "1.75" in text


def test_plot_case_metrics_uses_case_rows_only(run_dir, tmp_path):
    assert is_png(plot_case_metrics(run_dir / "eval" / "metrics.csv", tmp_path))
    only_slices = tmp_path / "metrics.csv"
    only_slices.write_text("case,reference,level,slice,dice,hd95\na,observer1,slice,0,1.0,0.0\n")
    with pytest.raises(DataError, match="no specimen"):
        plot_case_metrics(only_slices, tmp_path)


def test_plot_case_metrics_does_not_pool_millimetres_with_voxels(tmp_path, monkeypatch):
    # Case a's HD95 is 0.2 mm, b's 2 voxels (no spacing): both were drawn in one box on an
    # axis labelled with the first row's unit, "HD95 (mm)", as if b were 2 mm.
    import bcseg.report.figures as figures

    drawn = {}
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.setdefault("fig", fig) and path)
    metrics = tmp_path / "metrics.csv"
    metrics.write_text("case,reference,level,slice,dice,hd95,unit\n"
                       "a,observer1,image,,0.5,0.2,mm\nb,observer1,image,,0.5,2.0,voxel\n")
    plot_case_metrics(metrics, tmp_path)
    dice_axis, hd95_axis = drawn["fig"].axes
    assert sorted(dice_axis.collections[0].get_offsets()[:, 1]) == [0.5, 0.5]  # Dice has no unit
    assert "mm" not in hd95_axis.get_ylabel() or "voxel" in hd95_axis.get_ylabel()
    plotted = [y for c in hd95_axis.collections for y in c.get_offsets()[:, 1]]
    assert plotted == []  # neither unit's values are drawn as the other's
    assert "not drawn" in hd95_axis.get_title()


def test_build_report_needs_something(tmp_path):
    with pytest.raises(DataError, match="nothing to report"):
        build_report(tmp_path)


def test_human_level_verdict_is_shown_first(run_dir):
    text = build_report(run_dir, out=run_dir / "first").read_text(encoding="utf-8")
    summary = json.loads((run_dir / "eval" / "summary.json").read_text())
    verdicts = [c["text"] for c in summary["human_level"]["comparisons"]]
    first = text.index("Human level: does the model agree")
    assert first < text.index("<h2>Training") < text.index("Model against each observer")
    for verdict in verdicts:
        assert html.escape(verdict) in text[first:text.index("<h2>Training")]
    assert "Paired human-level test" in text  # the full table, in the evaluation section


# --------------------------------------------------------------------------- channels

def test_report_draws_each_channel_beside_the_overlay(two_channel_root, tmp_path):
    for case in discover(two_channel_root):
        mask = read_case_masks(case)["observer1"]
        io.write_mask(tmp_path / "pred" / f"{case.id}_mask.tif", mask, (1.0, 0.25, 0.25))
    evaluate(tmp_path / "pred", two_channel_root, tmp_path / "eval", n_boot=50)
    text = build_report(tmp_path / "eval").read_text(encoding="utf-8")
    figures = {name: tmp_path / "eval" / f"examples_{name}.png" for name in ("us", "pa")}
    assert all(is_png(png) for png in figures.values())
    for name, png in figures.items():  # embedded, named, after the overlay
        assert base64.b64encode(png.read_bytes()).decode("ascii") in text
        assert f'alt="channel {name}"' in text and f"channel {name}: the same slices" in text
    assert text.index('alt="example slices"') < text.index('alt="channel us"') < text.index('alt="channel pa"')
    # The PA figure shows the PA channel: its pixels are not those of the ultrasound one.
    us, pa = (imread(png)[..., :3] for png in figures.values())
    assert us.shape == pa.shape and not np.array_equal(us, pa)



def test_a_prediction_changed_after_the_evaluation_is_refused(run_dir, tmp_path):
    """The report printed the old Dice beside examples drawn from the new masks."""
    import os
    import shutil

    copy = shutil.copytree(run_dir, tmp_path / "run")
    from bcseg.measure.evaluate import evaluate as score
    score(copy / "pred", discover(copy / "data"), copy / "eval", force=True, n_boot=200)
    assert build_report(copy).is_file()  # current: fine
    mask = sorted((copy / "pred").glob("*_mask.tif"))[0]
    io.write_mask(mask, np.zeros_like(io.read_image(mask)[0]))
    later = (copy / "eval" / "metrics.csv").stat().st_mtime_ns + 10**9
    os.utime(mask, ns=(later, later))  # coarse file-system clocks: make the order certain
    with pytest.raises(DataError, match=rf"{mask.name}: changed after the evaluation"):
        build_report(copy)


# --------------------------------------------------------------------------- damaged tables

def _replace_cell(path, column: str, value: str) -> None:
    header, first, *rest = path.read_text().splitlines()
    cells = first.split(",")
    cells[header.split(",").index(column)] = value
    path.write_text("\n".join([header, ",".join(cells), *rest]) + "\n")


def _edit_summary(path, edit) -> None:
    summary = json.loads(path.read_text())
    edit(summary)
    path.write_text(json.dumps(summary))


DAMAGE = {  # what is damaged: (the file, how)
    "agreement without its columns": ("eval/agreement.csv", lambda p: p.write_text("x,y\n1\n")),
    "agreement Dice no number": ("eval/agreement.csv", lambda p: _replace_cell(p, "dice", "abc")),
    "agreement cut short": ("eval/agreement.csv", lambda p: p.write_text(p.read_text()[:200])),
    "history without its columns": ("history.csv", lambda p: p.write_text("x,y\n1\n")),
    "history loss no number": ("history.csv", lambda p: p.write_text("epoch,loss\n0,abc\n")),
    "history not UTF-8": ("history.csv", lambda p: p.write_bytes(b"\xff\xfe\x00")),
    "summary lacks its fields": ("eval/summary.json", lambda p: p.write_text("{}")),
    "summary inputs no object": ("eval/summary.json",
                                 lambda p: _edit_summary(p, lambda s: s.update(inputs=3))),
    "summary reference lacks metrics": ("eval/summary.json", lambda p: _edit_summary(
        p, lambda s: s["references"]["observer1"].pop("metrics"))),
    "summary case observers no lists": ("eval/summary.json", lambda p: _edit_summary(
        p, lambda s: s["inputs"]["cases"][0].update(observers=3))),
    "margins distance no number": ("margins/specimen_000_margins.csv",
                                   lambda p: p.write_text("case,distance_mm\nspecimen_000,abc\n")),
    "margins without its columns": ("margins/specimen_000_margins.csv",
                                    lambda p: p.write_text("x,y\n1,2\n")),
    # the JSON parser's RecursionError was an unexpected error (exit 1)
    "summary nested too deeply": ("eval/summary.json",
                                  lambda p: p.write_text("[" * 100_000 + "]" * 100_000)),
}


@pytest.fixture(scope="module")
def reported_run(run_dir, tmp_path_factory):
    """A copy of run_dir with a first report: its files are bcseg's (recorded by size and
    modification time, which ``shutil.copytree`` keeps, so each test's copy is too)."""
    import shutil

    from bcseg.cli import main

    copy = shutil.copytree(run_dir, tmp_path_factory.mktemp("reported") / "run",
                           ignore=shutil.ignore_patterns("*.png", "*.html", "out", "first"))
    assert main(["report", str(copy)]) == 0
    return copy


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_report_on_a_damaged_table_is_one_line_naming_it_and_redraws_nothing(damage, reported_run, tmp_path,
                                                                            capsys):
    """A malformed agreement.csv failed with "KeyError: 'case'" after loss.png and dice.png
    were redrawn; a Dice of 'abc' in it, or a loss of 'abc' in history.csv, was drawn as
    a gap; a summary.json lacking a field crashed the same way."""
    import shutil

    from bcseg.cli import main

    copy = shutil.copytree(reported_run, tmp_path / "run")
    name, damage_it = DAMAGE[damage]
    damage_it(copy / name)
    before = {p: p.stat().st_mtime_ns for p in copy.rglob("*")}
    capsys.readouterr()
    code = main(["report", str(copy)])
    lines = capsys.readouterr().err.splitlines()
    assert code == 3 and len(lines) == 1, lines
    assert lines[0].startswith(f"bcseg: error: {copy / name}: ") and "Error" not in lines[0]
    assert {p: p.stat().st_mtime_ns for p in copy.rglob("*")} == before


def _fifo(path) -> None:
    import os
    path.unlink()
    os.mkfifo(path)


def _folder(path) -> None:
    path.unlink()
    path.mkdir()


def _broken_link(path) -> None:
    path.unlink()
    path.symlink_to(path.with_name("gone.csv"))


NOT_FILES = {  # a table the report reads, there but no file: (the file, how)
    "agreement a named pipe": ("eval/agreement.csv", _fifo),
    "metrics a named pipe": ("eval/metrics.csv", _fifo),
    "metrics a folder": ("eval/metrics.csv", _folder),
    "summary a named pipe": ("eval/summary.json", _fifo),
    "summary a folder": ("eval/summary.json", _folder),
    "history a named pipe": ("history.csv", _fifo),
    "history a folder": ("history.csv", _folder),
    "margins a broken link": ("margins/specimen_000_margins.csv", _broken_link),
}


@pytest.mark.parametrize("problem", sorted(NOT_FILES))
def test_report_on_a_table_that_is_no_file_is_one_line_naming_it(problem, reported_run, tmp_path, capsys):
    """A named pipe as agreement.csv blocked the report forever; a folder or a pipe as
    metrics.csv, summary.json or history.csv, or a broken link as a margins table, was
    passed over without a word and the page rebuilt without that part."""
    import shutil
    import signal

    from bcseg.cli import main

    copy = shutil.copytree(reported_run, tmp_path / "run")
    name, make = NOT_FILES[problem]
    make(copy / name)
    before = {p: p.lstat().st_mtime_ns for p in copy.rglob("*")}

    def stuck(signum, frame):
        raise TimeoutError("the report blocked on a named pipe")

    old = signal.signal(signal.SIGALRM, stuck)
    signal.alarm(60)
    try:
        capsys.readouterr()
        code = main(["report", str(copy)])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    lines = capsys.readouterr().err.splitlines()
    assert code == 3 and len(lines) == 1, lines
    assert lines[0].startswith(f"bcseg: error: {copy / name}: is a "), lines
    assert {p: p.lstat().st_mtime_ns for p in copy.rglob("*")} == before


def test_report_of_a_folder_far_too_big_for_a_run_is_refused_without_walking_it(
        reported_run, tmp_path, monkeypatch, capsys):
    """`bcseg report /` walked the whole disk (every search anew) before it said
    "nothing to report". A folder with more entries below it than any run holds is
    refused as soon as the walk passes that many, and nothing is written. The bound is
    lowered here so that a test folder can pass it; the walk is the real one."""
    import shutil

    from bcseg.cli import main
    from bcseg.report import html as report_html

    monkeypatch.setattr(report_html, "MOST_ENTRIES_BELOW", 60)
    big = tmp_path / "disk"
    shutil.copytree(reported_run, big / "run")
    assert main(["report", str(big / "run")]) == 0  # a run is below the bound
    for n in range(3):
        (big / f"other{n}").mkdir()
        for i in range(20):
            (big / f"other{n}" / f"{i}.txt").write_text("x")
    before = {p: p.lstat().st_mtime_ns for p in big.rglob("*")}
    capsys.readouterr()
    assert main(["report", str(big)]) == 3
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(big) in err and "over 60 files and folders below it" in err
    assert {p: p.lstat().st_mtime_ns for p in big.rglob("*")} == before


def test_report_skips_hidden_folders_without_entering_them(reported_run, tmp_path):
    """A hidden folder (.git, .venv, a trash folder) is neither reported nor walked."""
    import shutil

    copy = shutil.copytree(reported_run, tmp_path / "run")
    hidden = copy / ".old" / "run"
    hidden.mkdir(parents=True)
    (hidden / "history.csv").write_text("not, a, history\n")  # would be refused if read
    build_report(copy)
    assert not (hidden / "loss.png").exists()


def test_paired_table_does_not_call_an_undefined_hd95_infinite():
    # Specimen 3: no tumour for the model nor the other observer, HD95 undefined (NaN);
    # specimen 4: the model found none, HD95 inf. The table read "(2 inf left out)".
    from bcseg.measure.observers import paired_comparison
    from bcseg.report.html import _paired_html

    c = paired_comparison([2.0, 3.0, float("nan"), float("inf")], [1.0, 2.0, float("nan"), 2.0],
                          metric="hd95", unit="mm")
    page = _paired_html({"human_level": {"comparisons": [c]}})
    assert "2 (2 left out, a mask empty)" in page and "inf left out" not in page


def test_per_case_ceiling_of_three_observers_keeps_an_unshared_tumour_infinite(tmp_path):
    # As in summary.json: pairs HD95 nan (both empty), inf, inf. The per-case table and
    # the per-case figure showed "–", undefined, where one observer saw a tumour.
    from bcseg.report.figures import _agreement_by_case

    (tmp_path / "agreement.csv").write_text(
        "case,level,observer_a,observer_b,dice,hd95\n"
        "a,image,observer1,observer2,1.0,nan\n"
        "a,image,observer1,observer3,0.0,inf\n"
        "a,image,observer2,observer3,0.0,inf\n")
    assert _agreement_by_case(tmp_path / "agreement.csv") == {"a": {"dice": pytest.approx(1 / 3),
                                                                    "hd95": float("inf")}}


@pytest.mark.parametrize("name, text", [
    ("budget_margins.csv", "item,cost\nprobe,12\n"),          # a table of yours so named
    ("sub/history.csv", "epoch,loss\n0,abc\n"),               # a damaged table below
])
def test_evaluate_checks_the_tables_its_report_reads_before_writing(run_dir, tmp_path, capsys, name, text):
    """A CSV of the user's named *_margins.csv in the output folder is read by the report:
    evaluate wrote metrics.csv, agreement.csv and summary.json, then failed drawing the
    report (exit 3), leaving an evaluation without its page. It is refused first."""
    from bcseg.cli import main

    out = tmp_path / "ev"
    (out / name).parent.mkdir(parents=True)
    (out / name).write_text(text)
    capsys.readouterr()
    code = main(["evaluate", "--pred", str(run_dir / "pred"), "--truth", str(run_dir / "data"),
                 "--out", str(out)])
    lines = capsys.readouterr().err.splitlines()
    assert code == 3 and len(lines) == 1, lines
    assert lines[0].startswith(f"bcseg: error: {out / name}: ")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == sorted(
        {name, *(name.split("/")[:-1])})  # only what was there: no table, record or lock
    assert main(["evaluate", "--pred", str(run_dir / "pred"), "--truth", str(run_dir / "data"),
                 "--out", str(out), "--no-report"]) == 0  # without the report, nothing reads it



@pytest.mark.parametrize("case_id", ["a$^{$", "s$1$"])
def test_a_case_id_with_dollar_signs_is_drawn_as_written(tmp_path, monkeypatch, case_id):
    """Matplotlib reads text between two '$' as math: a case id 'a$^{$' (a legal file
    name) failed the examples figure with an empty message, so the report said
    'Examples not drawn:' and nothing more, and 's$1$' was drawn as an italic 's1'."""
    from matplotlib.figure import Figure

    titles = []
    save = Figure.savefig

    def spy(fig, *args, **kwargs):  # the titles as they are laid out
        titles.extend((ax.title.get_text(), ax.title.get_parse_math()) for ax in fig.axes)
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    truth = np.zeros((16, 16), bool)
    truth[4:8, 4:8] = True
    path = plot_examples([(case_id, np.full((16, 16), 100, np.uint8), truth, truth)],
                         tmp_path / "examples.png", n=1, worst=0)
    assert is_png(path)
    assert (case_id, False) in titles  # drawn as text, not parsed as math


def test_an_observer_named_with_dollar_signs_is_reported(tmp_path, capsys):
    """Observer names are folder names and label the figures (the ticks of
    case_metrics.png, the truth in examples.png). An observer 'o$^{$' was parsed as
    math: evaluate wrote its tables, then failed building the report with 'bcseg:
    error: ValueError: ... ParseSyntaxException', naming no file."""
    from bcseg.cli import main

    spacing = (0.5, 0.25)
    for case in ("a", "b"):
        io.write_image(tmp_path / "data" / "images" / f"{case}.tif", np.full((16, 16), 100, np.uint8),
                       spacing)
        one, two, pred = (np.zeros((16, 16), bool) for _ in range(3))
        one[4:8, 4:8] = two[4:8, 5:9] = pred[6:10, 4:8] = True
        io.write_mask(tmp_path / "data" / "masks" / "o$^{$" / f"{case}.tif", one, spacing)
        io.write_mask(tmp_path / "data" / "masks" / "o2" / f"{case}.tif", two, spacing)
        io.write_mask(tmp_path / "pred" / f"{case}_mask.tif", pred, spacing)
    out = tmp_path / "eval"
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--truth", str(tmp_path / "data"),
                 "--out", str(out)]) == 0
    assert "error" not in capsys.readouterr().err
    assert is_png(out / "case_metrics.png") and is_png(out / "examples.png")
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "Examples not drawn" not in page and html.escape("o$^{$") in page
    # the numbers beside it, by hand: pred is o$^{$ moved 2 rows (0.5 mm each) down
    table = {row["reference"]: row for row in ceiling_table(out / "summary.json")}
    assert table["o$^{$"]["stats"]["dice"]["mean"] == pytest.approx(0.5)
    assert table["o$^{$"]["stats"]["hd95"]["mean"] == pytest.approx(1.0)
