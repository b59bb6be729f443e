"""Untrusted names reach each report format escaped for that format: HTML-escaped in report.html,
markdown-escaped in report.md, formula-neutralised in the analysis CSVs of `vr eval`, and verbatim
in the competition CSV of `vr submit` (its labels must be the folder names exactly).

The names, as a user could have them on disk:
- class folders ``<img src=x onerror=alert(1)>``, ``a|b`` and ``=cmd``;
- file names ``<img src=x onerror=alert(2)>.png``, ``a|b.png`` and ``=x.png`` inside them;
- ``<script>alert(1)</script>`` holds a ``/``, so it cannot be one file name: the whole tree lives
  under the folders ``<script>alert(1)<`` / ``script>``, so the data path and the model path that
  the reports print contain it.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import TINY_TRAIN, colour_image
from vr.cli import main

SCRIPT = "<script>alert(1)</script>"
IMG_CLASS = "<img src=x onerror=alert(1)>"
IMG_FILE = "<img src=x onerror=alert(2)>"
CLASSES = {IMG_CLASS: (200, 40, 40), "a|b": (40, 180, 60), "=cmd": (50, 60, 200)}
FORMULA = ("=", "+", "-", "@", "\t", "\r")


def write_split(root: Path, per_class: int, seed: int, special_files: bool) -> None:
    import numpy as np

    rng = np.random.default_rng(seed)
    for name, colour in CLASSES.items():
        d = root / name
        d.mkdir(parents=True)
        for i in range(per_class):
            colour_image(rng, colour, (40, 40)).save(d / f"img{i}.png")
        if special_files:
            for stem in (IMG_FILE, "a|b", "=x"):
                colour_image(rng, colour, (40, 40)).save(d / f"{stem}.png")


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """One `vr train` (1 epoch), `vr eval` of its best.pt and `vr submit` over the val images."""
    base = tmp_path_factory.mktemp("esc") / "<script>alert(1)<" / "script>"
    data, run, rep = base / "data", base / "run", base / "report"
    write_split(data / "train", per_class=6, seed=0, special_files=False)
    write_split(data / "val", per_class=2, seed=1, special_files=True)
    assert main(["train", str(data), "--out", str(run), *TINY_TRAIN, "--epochs", "1", "--no-tensorboard"]) == 0
    assert main(["eval", str(run / "best.pt"), "--data", str(data / "val"), "--out", str(rep), "--workers", "0"]) == 0
    # the test folder: each val image copied flat, named <n>_<class>_<file> except the formula-like stems
    test = base / "test"
    test.mkdir()
    sources = {}
    for k, p in enumerate(sorted((data / "val").rglob("*.png"))):
        stem = {("=cmd", "=x.png"): "=cmd", ("a|b", "=x.png"): "+1", (IMG_CLASS, "=x.png"): "@sum"}.get(
            (p.parent.name, p.name), f"t{k}")
        shutil.copy(p, test / f"{stem}.png")
        sources[stem] = p.relative_to(data / "val").as_posix()
    sub = base / "prediction.csv"
    assert main(["submit", str(run / "best.pt"), "--test-dir", str(test), "--out", str(sub), "--workers", "0"]) == 0
    return {"base": base, "data": data, "rep": rep, "sub": sub, "sources": sources}


class Tags(HTMLParser):
    """Start tags with their attributes, and all text (entities decoded)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def test_report_html_escapes_every_name(kit):
    page = (kit["rep"] / "report.html").read_text(encoding="utf-8")
    for raw in (SCRIPT, IMG_CLASS, IMG_FILE):
        assert raw not in page  # neither in the markup nor inside the embedded JSON
    t = Tags()
    t.feed(page)
    t.close()
    assert [tag for tag, _ in t.tags].count("script") == 2  # the JSON data and the page's own script
    assert all(set(a) <= {"data-t", "alt"} for tag, a in t.tags if tag == "img")  # only the page's thumbnails
    assert not [(tag, a) for tag, a in t.tags if any(k.lower().startswith("on") for k in a)]  # no handlers
    # shown as text: the parsed page holds every name intact
    text = "".join(t.text)
    assert SCRIPT in text and IMG_CLASS in text and "a|b" in text and "=cmd" in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    # the embedded JSON gives the script every file name intact
    data = json.loads(re.search(r'<script type="application/json" id="vr-data">(.*?)</script>', page, re.S).group(1))
    names = set(data["images"].values())
    assert {f"{c}/{IMG_FILE}.png" for c in CLASSES} <= names and "=cmd/=x.png" in names
    assert sorted(data["models"][0]["labels"]) == sorted(CLASSES)
    figures = [a["title"] for tag, a in t.tags if tag == "figure"]
    assert figures and set(figures) <= names  # each thumbnail's title attribute decodes to its file name


def strip_code_spans(md: str) -> str:
    return re.sub(r"(`+)(.+?)\1", "", md)


def test_report_md_escapes_every_name(kit):
    md = (kit["rep"] / "report.md").read_text(encoding="utf-8")
    assert r"| a\|b |" in md  # its per-class row: the pipe cannot start a new cell
    assert r"\<img src=x onerror=alert(1)\>" in md
    per_class = md[md.index("| class | precision | recall | F1 | images |"):].split("\n\n", 1)[0]
    rows = per_class.splitlines()[2:]
    assert len(rows) == 3
    for row in rows:  # a table row splits on unescaped pipes into exactly its columns
        assert len(re.split(r"(?<!\\)\|", row)) == 7, row
    # the paths that hold <script> are code spans (literal text in markdown); outside them no raw '<'
    assert f"{SCRIPT}/data/val`" in md and f"{SCRIPT}/run/best.pt`" in md
    assert not re.search(r"(?<!\\)<", strip_code_spans(md))


def read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_analysis_csvs_neutralise_formula_cells(kit):
    rep = kit["rep"]
    rows = read_csv(rep / "predictions_best.csv")
    assert rows[0] == ["image", "true_label", "pred_label", "confidence"]
    body = rows[1:]
    assert len(body) == 15
    for image, true, pred, conf in body:
        for cell in (image, true, pred):
            assert not cell.startswith(FORMULA), cell  # a spreadsheet shows every name as text
        assert 0 < float(conf) <= 1 and not conf.startswith("'")  # numbers as written
    by_image = {r[0]: r for r in body}
    assert by_image["'=cmd/=x.png"][1] == "'=cmd"
    assert by_image["a|b/=x.png"][1] == "a|b"  # only a cell's first character counts
    assert f"{IMG_CLASS}/{IMG_FILE}.png" in by_image  # CSV is not HTML: names otherwise verbatim
    labels = json.loads((rep / "report.json").read_text())["models"][0]["confusion_matrix"]["labels"]
    assert sorted(labels) == sorted(CLASSES)
    for name in ("confusion_best.csv", "confusion_best_normalized.csv"):
        table = read_csv(rep / name)
        want = ["'=cmd" if c == "=cmd" else c for c in labels]
        assert table[0] == ["true\\pred", *want] and [r[0] for r in table[1:]] == want
        values = [v for r in table[1:] for v in r[1:]]
        assert all(re.fullmatch(r"\d+(\.\d+)?", v) for v in values), values
    counts = read_csv(rep / "confusion_best.csv")
    assert sum(int(v) for r in counts[1:] for v in r[1:]) == 15


def test_negative_numbers_are_data_not_formulas(tmp_path):
    from vr.evaluate.report import sheet_text, write_confusion_csv

    write_confusion_csv(tmp_path / "c.csv", [[-0.5, 1.0], [0.25, -1.0]], ["-neg", "@at"], "{:.6f}")
    assert read_csv(tmp_path / "c.csv") == [["true\\pred", "'-neg", "'@at"], ["'-neg", "-0.500000", "1.000000"],
                                            ["'@at", "0.250000", "-1.000000"]]
    assert [sheet_text(s) for s in ("+1", "\tx", "\rx", "a=b", "", "'=x")] == ["'+1", "'\tx", "'\rx", "a=b", "", "'=x"]


def test_submission_csv_stays_verbatim(kit):
    rows = read_csv(kit["sub"])
    assert rows[0] == ["image_name", "pred_label"]
    sub = dict(rows[1:])
    assert len(sub) == 15
    assert "=cmd" in sub and "+1" in sub and "@sum" in sub  # image names exactly the file stems
    assert set(sub.values()) <= set(CLASSES)  # labels exactly the folder names, never prefixed
    # the same prediction as vr eval made for that image: neutralised there, verbatim here
    evald = {r[0]: r[2] for r in read_csv(kit["rep"] / "predictions_best.csv")[1:]}
    for stem, label in sub.items():
        src = kit["sources"][stem]
        key = "'" + src if src.startswith(FORMULA) else src
        assert evald[key] == ("'" + label if label.startswith(FORMULA) else label), stem


def test_terminal_summary_prints_names_literally(capsys):
    """Rich markup in a name is text: `[/]` alone would be a MarkupError, `[bold]` would vanish."""
    from vr.evaluate.report import print_summary

    model = {"name": "[bold]m", "runtime": "torch", "provider": "cpu", "tta": "none", "accuracy": 0.5, "top5": 1.0,
             "macro_f1": 0.25, "images_per_second": None, "latency_ms": {},
             "members": [{"path": "/x/[red]a.pt", "weight": 1.0, "accuracy": 0.5}], "member_agreement": []}
    pair = {"a": "[/]", "b": "b", "top1_agreement": 1.0, "n_flipped": 0, "max_abs_prob_diff": 0.0,
            "deltas": {"accuracy": -0.005}}
    print_summary({"n_images": 2, "data": "/d/[/]", "models": [model], "agreement": [pair]})
    out = capsys.readouterr().out
    assert "/d/[/]" in out and "[bold]m" in out and "/x/[red]a.pt" in out
    assert "[/] vs b: top-1 agreement 100.00%" in out and "Δ top-1 -0.50 pts" in out
    assert "50.00%" in out and "25.00%" in out
