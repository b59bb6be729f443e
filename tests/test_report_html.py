"""report.html and manifest.json of `vr eval`: a self-contained page (checked as text), escaping of
untrusted names, bounded thumbnails, and the page itself in a real headless Chromium.

The browser test needs the `playwright` package (pip; its own browsers are never downloaded) and
a Chromium binary: Debian's `chromium` package (/usr/bin/chromium), or VR_CHROMIUM=/path. It
skips with the reason when either is missing, unless VR_REQUIRE_BROWSER=1 (set by CI), where
that is a failure.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import eval_helpers as H
from vr.cli import main

RGB = {k: H.COLOURS[k] for k in ("red", "green", "blue")}
EVIL_DIR = "<img src=x onerror=alert(1)>"  # a legal folder name: the class of the end-to-end report
EVIL = "<script>alert(1)</script>"  # has a '/', so it cannot be a folder: used in the rendered report


class Tags(HTMLParser):
    """Every start tag with its attributes, and the text of each <script>."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"
        if self._in_script:
            self.scripts.append("")

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data


def parse(page: str) -> Tags:
    t = Tags()
    t.feed(page)
    t.close()
    return t


def page_data(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="vr-data">(.*?)</script>', page, re.S)
    assert m, "no embedded data"
    return json.loads(m.group(1))


def assert_self_contained(page: str) -> None:
    """No network resource: nothing fetched from http(s) or protocol-relative URLs, no external
    stylesheets or scripts, every src a data URI."""
    assert not re.search(r"""(src|href|action|poster|srcset)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert not re.search(r"url\(\s*['\"]?\s*(https?:)?//", page, re.I)
    assert "@import" not in page
    for tag, attrs in parse(page).tags:
        assert tag not in ("link", "iframe", "object", "embed", "base"), tag
        assert not (tag == "script" and "src" in attrs), attrs
        if "src" in attrs:
            assert attrs["src"].startswith("data:"), (tag, attrs["src"][:60])


def assert_no_injection(page: str, *evil: str) -> None:
    t = parse(page)
    assert [tag for tag, _ in t.tags].count("script") == 2  # the JSON data and the page's own script
    for tag, attrs in t.tags:
        assert not any(a.lower().startswith("on") for a in attrs), (tag, attrs)  # no inline handlers at all
    for s in evil:
        assert s not in page  # neither raw in the markup nor raw inside the JSON
    assert "</script" not in t.scripts[0].lower()


# --- the end-to-end report (one `vr eval` for the module) ------------------------------------
@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    """vr eval of a checkpoint and a colour ONNX whose red and green are swapped: errors, flips,
    and a class whose name is markup."""
    d = tmp_path_factory.mktemp("htmlkit")
    cols = {"red": RGB["red"], "green": RGB["green"], EVIL_DIR: RGB["blue"]}
    ckpt = H.make_checkpoint(d / "best.pt", cols)
    swapped = H.make_onnx(d / "swapped.onnx", {"red": RGB["green"], "green": RGB["red"], EVIL_DIR: RGB["blue"]})
    data = H.write_image_folder(d / "data", cols, per_class=4, seed=2)
    (data / "red" / "red_0.png").rename(data / "green" / "red_0.png")  # one mislabelled image
    (data / "green" / "green_1.png").rename(data / "green" / f"{EVIL_DIR}.png")  # a file name that is markup
    out = d / "report"
    argv = ["eval", str(ckpt), str(swapped), "--data", str(data), "--out", str(out), "--workers", "0"]
    saved, sys.argv = sys.argv, ["vr", *argv]
    try:
        assert main(argv) == 0
    finally:
        sys.argv = saved
    return {"dir": d, "out": out, "argv": argv, "report": json.loads((out / "report.json").read_text())}


def test_eval_writes_a_self_contained_escaped_page(e2e):
    page = (e2e["out"] / "report.html").read_text()
    assert_self_contained(page)
    assert_no_injection(page, EVIL_DIR)
    assert "&lt;img src=x onerror=alert(1)&gt;" in page  # shown, as text
    data = page_data(page)
    assert EVIL_DIR in data["models"][0]["labels"]  # intact once the JSON is parsed
    assert f"green/{EVIL_DIR}.png" in data["images"].values()
    # every image of this small set is listed somewhere and has a real thumbnail
    assert len(data["thumbs"]) == 12
    for uri in data["thumbs"].values():
        assert uri.startswith("data:image/jpeg;base64,")
        img = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
        assert img.format == "JPEG" and max(img.size) <= 96
    # the parts of the page
    for anchor in ('id="summary"', 'id="agreement"', 'id="cm-0"', 'id="cm-1"', 'id="perclass-0"', 'id="flips"',
                   'id="manifest"', "Worst 3 classes by F1"):
        assert anchor in page, anchor
    rep = e2e["report"]
    (pair,) = rep["agreement"]
    assert pair["n_flipped"] == 8  # the red and green images: the swapped model calls them the other
    assert f'{pair["n_flipped"]} flipped of 12' in page
    # the heat map cells carry the counts of the confusion matrix
    counts = rep["models"][1]["confusion_matrix"]["counts"]
    cells = {(int(a["data-i"]), int(a["data-j"])): int(a["data-n"]) for tag, a in parse(page).tags
             if tag == "td" and a.get("data-m") == "1"}
    assert cells == {(i, j): n for i, row in enumerate(counts) for j, n in enumerate(row) if n}


def test_eval_writes_the_manifest(e2e):
    from importlib import metadata

    import torch

    man = json.loads((e2e["out"] / "manifest.json").read_text())
    import vr

    assert man["vr_version"] == vr.__version__ == metadata.version("vr")
    v = man["versions"]
    assert set(v) == {"vr", "python", "torch", "torchvision", "timm", "onnx", "onnxruntime", "tensorrt"}
    assert v["torch"] == metadata.version("torch") and v["onnxruntime"] is not None
    assert v["python"] == ".".join(map(str, sys.version_info[:3]))
    try:
        metadata.version("tensorrt")
    except metadata.PackageNotFoundError:
        assert v["tensorrt"] is None
    assert man["device"]["name"] and (man["device"]["cuda"] or man["device"]["name"] == man["device"]["cpu"])
    if torch.cuda.is_available():
        assert man["device"]["name"].startswith(torch.cuda.get_device_name(0))
    assert man["providers"] == {
        "best": {"path": str(e2e["dir"] / "best.pt"), "runtime": "torch", "provider": "cpu",
                 "execution_providers": ["cpu"]},
        "swapped": {"path": str(e2e["dir"] / "swapped.onnx"), "runtime": "onnxruntime",
                    "provider": "CPUExecutionProvider", "execution_providers": ["CPUExecutionProvider"]}}
    assert man["command"] == ["vr", *e2e["argv"]]
    assert man["config"] == e2e["report"]["config"] and man["config"]["html"] is True
    page = (e2e["out"] / "report.html").read_text()
    assert f"<b>torch</b> {v['torch']}" in page and "tensorrt" in page  # the footer
    assert not list(e2e["out"].glob(".*.tmp"))


def test_write_manifest_is_callable_on_its_own(tmp_path, monkeypatch):
    from vr.util.manifest import write_manifest

    monkeypatch.setattr(sys, "argv", ["vr", "train", "data", "--epochs", "3"])
    man = write_manifest(tmp_path / "run", {"epochs": 3, "out": tmp_path / "run"}, providers=["cpu"])
    on_disk = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert on_disk == man
    assert man["command"] == ["vr", "train", "data", "--epochs", "3"]
    assert man["config"] == {"epochs": 3, "out": str(tmp_path / "run")} and man["providers"] == ["cpu"]
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["manifest.json"]  # atomic: no temporary left


def test_no_html_flag(e2e, tmp_path):
    data = e2e["dir"] / "data"
    assert main(["eval", str(e2e["dir"] / "best.pt"), "--data", str(data), "--out", str(tmp_path / "r"),
                 "--workers", "0", "--no-html"]) == 0
    assert (tmp_path / "r" / "report.json").is_file() and (tmp_path / "r" / "manifest.json").is_file()
    assert not (tmp_path / "r" / "report.html").exists()


# --- the renderer on its own: escaping and bounds --------------------------------------------
def synthetic(tmp_path: Path, classes: list[str], per_class: int, seed: int = 0):
    """A report of two fake models (~70% right, the second flipping some answers) over real image
    files of 120x90 pixels (so thumbnails are shrunk), with file names that are markup."""
    from vr.data.classes import ClassMap
    from vr.evaluate.metrics import agreement, classification_metrics

    rng = np.random.default_rng(seed)
    (tmp_path / "imgs").mkdir(exist_ok=True)
    paths, images, true = [], [], []
    for ci, c in enumerate(classes):
        for i in range(per_class):
            p = tmp_path / "imgs" / f"{ci}_{i}.png"
            H.colour_image(list(H.COLOURS.values())[ci % 5], (120, 90), seed=ci * 1000 + i).save(p)
            paths.append(p)
            images.append(f'{c}/"><img src=x onerror=alert(2)> {i}.png')
            true.append(c)
    n, k = len(paths), len(classes)
    y = np.array([classes.index(t) for t in true])
    pred_a = np.where(rng.random(n) < 0.7, y, rng.integers(0, k, n))
    pred_b = np.where(rng.random(n) < 0.8, pred_a, rng.integers(0, k, n))
    probs = []
    for pred in (pred_a, pred_b):
        p = rng.random((n, k)) * 0.2
        p[np.arange(n), pred] += 1.0
        probs.append((p / p.sum(1, keepdims=True)).astype(np.float32))
    models = []
    for name, pr in (("a&b", probs[0]), ("<i>b</i>", probs[1])):
        models.append({"name": name, "path": f"/m/{name}", "runtime": "onnxruntime", "provider": "CPU", "tta": "none",
                       "notes": [f"{EVIL} note"], "images_per_second": 10.0, "latency_ms": {"p50": 1.0, "p95": 2.0},
                       **classification_metrics(y, pr, classes, worst_k=3)})
    agr = agreement(probs[0], ClassMap(tuple(classes)), probs[1], ClassMap(tuple(classes)), images, true)
    report = {"data": f"/data/{EVIL}", "n_images": n, "data_classes": classes, "created": "now", "skipped": [],
              "models": models, "agreement": [{"a": "a&b", "b": "<i>b</i>", **agr,
                                               "deltas": {"accuracy": 0.0, "macro_f1": 0.0}}]}
    return report, paths, images, true, probs


def test_rendered_page_escapes_every_name(tmp_path):
    from vr.evaluate.report_html import write_html_report

    classes = ["cat", EVIL, 'dog "&" <b>co</b>']
    report, paths, images, true, probs = synthetic(tmp_path, classes, per_class=6)
    manifest = {"versions": {"vr": EVIL}, "device": {"name": EVIL}, "providers": {EVIL: {"runtime": EVIL}},
                "command": ["vr", EVIL], "config": {"x": EVIL}, "created": EVIL, "platform": EVIL}
    write_html_report(tmp_path / "r.html", report, paths, images, true, probs, manifest)
    page = (tmp_path / "r.html").read_text()
    assert_self_contained(page)
    assert_no_injection(page, EVIL, "<b>co</b>", "<i>b</i>", "<img src=x onerror=alert(2)>")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    data = page_data(page)
    assert data["models"][0]["labels"] == classes  # the JSON round-trips the names exactly
    assert set(data["images"].values()) <= set(images)


def test_page_inlines_the_packaged_css_and_js(tmp_path):
    """The page is the package's template with its report.css and report.js inlined verbatim; no
    template marks a value safe (only Python does, for those two files and the escaped JSON)."""
    from importlib import resources

    from vr.evaluate.report_html import write_html_report

    report, paths, images, true, probs = synthetic(tmp_path, ["cat", "dog"], per_class=3)
    write_html_report(tmp_path / "r.html", report, paths, images, true, probs)
    page = (tmp_path / "r.html").read_text()
    folder = resources.files("vr.evaluate") / "templates"
    css, js = (folder / "report.css").read_text(), (folder / "report.js").read_text()
    assert f"<style>{css}</style>" in page and f"<script>{js}</script>" in page
    for name in ("report.html.j2", "report.md.j2"):
        assert "|safe" not in (folder / name).read_text().replace(" ", "")


def test_thumbnails_are_bounded(tmp_path):
    from vr.evaluate.report_html import HtmlLimits, write_html_report

    classes = [f"c{i}" for i in range(6)]
    report, paths, images, true, probs = synthetic(tmp_path, classes, per_class=40)  # 240 images
    lim = HtmlLimits(thumb_size=48, quality=60, per_cell=5, per_diagonal=3, worst_wrong=4, worst_right=2, flips=7,
                     max_thumbnails=10_000)
    stats = write_html_report(tmp_path / "a.html", report, paths, images, true, probs, limits=lim)
    data = page_data((tmp_path / "a.html").read_text())
    for m in data["models"]:
        for key, (n, items) in m["cells"].items():
            i, j = key.split(",")
            assert len(items) == min(n, lim.per_diagonal if i == j else lim.per_cell), key
            confs = [c for _, c in items]
            assert confs == sorted(confs, reverse=True)  # most confident first
    page = (tmp_path / "a.html").read_text()
    assert page.count('class="th flipfig"') == lim.flips
    assert stats["thumbnails"] == len(data["thumbs"]) < 240
    for uri in data["thumbs"].values():
        assert max(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).size) <= 48

    # a page-wide cap: the per-part caps shrink until the thumbnails fit
    small = HtmlLimits(max_thumbnails=25)
    stats = write_html_report(tmp_path / "b.html", report, paths, images, true, probs, limits=small)
    data = page_data((tmp_path / "b.html").read_text())
    assert 0 < len(data["thumbs"]) == stats["thumbnails"] <= 25
    # and the default caps keep a big page small: ~3 KB a thumbnail at most
    stats = write_html_report(tmp_path / "c.html", report, paths, images, true, probs)
    assert stats["bytes"] < 80_000 + 3_000 * stats["thumbnails"]


# --- a real browser --------------------------------------------------------------------------
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def find_chromium() -> str | None:
    env = os.environ.get("VR_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def browser_or_skip():
    """(sync_playwright, chromium path), or a skip (a failure under VR_REQUIRE_BROWSER=1)."""
    required = os.environ.get("VR_REQUIRE_BROWSER") == "1"
    why = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright, why = None, "the playwright package is not installed (pip install -e '.[dev]')"
    exe = find_chromium()
    if why is None and exe is None:
        why = "no Chromium found (apt-get install -y chromium, or set VR_CHROMIUM=/path/to/chromium)"
    if why:
        if required:
            pytest.fail(f"VR_REQUIRE_BROWSER=1 but {why}")
        pytest.skip(why)
    return sync_playwright, exe


def test_report_in_headless_chromium(e2e, tmp_path):
    sync_playwright, exe = browser_or_skip()
    page_path = e2e["out"] / "report.html"
    dialogs, errors, requests = [], [], []
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=exe, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900}, offline=True)
        try:
            pg = ctx.new_page()
            pg.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            pg.on("pageerror", lambda err: errors.append(str(err)))
            pg.on("request", lambda r: requests.append(r.url))
            pg.goto(page_path.as_uri(), wait_until="load")

            # renders: the headline metrics, one model section shown, the escaped class name as text
            assert pg.title().startswith("vr eval")
            assert pg.locator("#summary tbody tr").count() == 2
            assert pg.locator("section.model:visible").count() == 1
            assert EVIL_DIR in pg.inner_text("#perclass-0")

            # thumbnails load (decoded, not broken)
            n_imgs = pg.locator("img").count()
            assert n_imgs > 10
            pg.wait_for_function("() => Array.from(document.images).every(i => i.complete)", timeout=15_000)
            broken = pg.evaluate("() => Array.from(document.images).filter(i => !(i.naturalWidth > 0)).length")
            assert broken == 0

            # clicking a confusion-matrix cell lists its images
            cell = pg.locator("#cm-0 td.c.o").first  # the mislabelled red image: true green, predicted red
            n = int(cell.get_attribute("data-n"))
            cell.click()
            panel = pg.locator("#cm-panel-0")
            assert panel.locator("figure").count() == n == 1
            assert "true green" in panel.inner_text() and "predicted red" in panel.inner_text()
            pg.wait_for_function("() => Array.from(document.querySelectorAll('#cm-panel-0 img'))"
                                 ".every(i => i.complete && i.naturalWidth > 0)", timeout=10_000)
            diag = pg.locator("#cm-0 td.c.d").first
            diag.click()
            assert panel.locator("figure").count() == int(diag.get_attribute("data-listed")) > 0
            assert panel.locator("figure.ok").count() == panel.locator("figure").count()

            # the other model's tab, and its matrix
            pg.click(".tabs button[data-m='1']")
            assert pg.locator("section.model[data-m='1']").is_visible()
            assert not pg.locator("section.model[data-m='0']").is_visible()
            pg.locator("#cm-1 td.c.o").first.click()
            assert pg.locator("#cm-panel-1 figure.bad").count() > 0

            # the per-class table sorts by a column, and back
            def column(i):
                return pg.eval_on_selector_all("#perclass-1 tbody tr", f"rs => rs.map(r => r.cells[{i}].dataset.v)")

            pg.click("#perclass-1 th:nth-child(4)")  # F1, lowest first
            f1 = [float(v) for v in column(3)]
            assert len(set(f1)) > 1 and f1 == sorted(f1)
            assert pg.get_attribute("#perclass-1 th:nth-child(4)", "aria-sort") == "ascending"
            pg.click("#perclass-1 th:nth-child(4)")
            assert [float(v) for v in column(3)] == sorted(f1, reverse=True)
            pg.click("#perclass-1 th:nth-child(5)")  # support
            support = [int(v) for v in column(4)]
            assert support == sorted(support) and support != [3, 5, 4]  # the class order is red, green, <img..>

            # a screenshot that shows something
            shot = tmp_path / "report.png"
            pg.click(".tabs button[data-m='0']")
            pg.locator("#cm-0 td.c.o").first.click()
            pg.screenshot(path=str(shot), full_page=True)
        finally:
            ctx.close()
    arr = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert arr.shape[0] > 900 and arr.shape[1] >= 1200
    assert arr.std() > 20  # not blank
    assert (np.abs(np.diff(arr, axis=0)).sum(-1) > 30).mean() > 0.01  # edges: text, tables, pictures
    if os.environ.get("VR_SCREENSHOT_DIR"):
        shutil.copy(shot, Path(os.environ["VR_SCREENSHOT_DIR"]) / "report_html.png")
    assert dialogs == [], f"a name ran as code: {dialogs}"
    assert errors == [], errors
    assert all(u.startswith(("file:", "data:")) for u in requests), [u for u in requests if not u.startswith("data:")]
