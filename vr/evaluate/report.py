"""Report files of `vr eval` (every one written atomically) and its terminal summary.

Each format escapes untrusted names (class, file and model names, paths) its own way: report.md
through the template's markdown escaping, the analysis CSVs by neutralising cells a spreadsheet
would run as a formula, the terminal by escaping rich markup (report.html: report_html.py).
"""

from __future__ import annotations

import csv
import io
import re
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from vr.util.fmt import number, params, percent, points
from vr.util.io import atomic_path, atomic_write_text


def csv_text(rows: Sequence[Sequence], header: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def sheet_text(v) -> str:
    """A text cell of an analysis CSV that a spreadsheet shows as text: one starting like a
    formula (``=``, ``+``, ``-``, ``@``, tab, CR) gets a leading ``'``. Only for names: the numbers
    these files hold are formatted here and written as they are. Never for `vr submit`'s CSV, whose
    labels must be the folder names exactly."""
    s = str(v)
    return "'" + s if s.startswith(FORMULA_START) else s


def model_labels(paths: Sequence[Path]) -> list[str]:
    """File-name-safe, unique labels: the stem; the name with its suffix when stems clash (best.pt,
    best.onnx -> best_pt, best_onnx); a counter when whole names clash too. An ensemble
    (a.pt+b.pt) is named by its members' stems joined by '+'."""
    from vr.models.ensemble import is_ensemble_spec, spec_label

    def safe(s: str) -> str:
        return re.sub(r"[^A-Za-z0-9._+-]+", "_", s).strip("._") or "model"

    stems = [safe(spec_label(p) if is_ensemble_spec(p) else Path(p).stem) for p in paths]
    labels = [s if stems.count(s) == 1 or is_ensemble_spec(p) else safe(Path(p).stem + "_" + Path(p).suffix.lstrip("."))
              for s, p in zip(stems, paths)]
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        if labels.count(lab) > 1:
            seen[lab] = seen.get(lab, 0) + 1
            lab = lab if seen[lab] == 1 else f"{lab}_{seen[lab]}"
        out.append(lab)
    return out


def write_predictions_csv(path: Path, images: Sequence[str], true_labels: Sequence[str], probs: np.ndarray,
                          class_names: Sequence[str]) -> None:
    pred = probs.argmax(axis=1)
    conf = probs.max(axis=1)
    rows = [(sheet_text(img), sheet_text(t), sheet_text(class_names[p]), f"{c:.6f}")
            for img, t, p, c in zip(images, true_labels, pred, conf)]
    atomic_write_text(path, csv_text(rows, ("image", "true_label", "pred_label", "confidence")))


def write_confusion_csv(path: Path, matrix, names: Sequence[str], fmt: str = "{}") -> None:
    """The matrix with the class names as first column and header (names neutralised, numbers as is)."""
    rows = [[sheet_text(names[i])] + [fmt.format(v) for v in row] for i, row in enumerate(matrix)]
    atomic_write_text(path, csv_text(rows, ["true\\pred", *map(sheet_text, names)]))


def write_confusion_png(path: Path, counts, normalized, names: Sequence[str], title: str) -> None:
    """Raw counts and row-normalised matrix side by side (matplotlib, no pyplot, Agg canvas)."""
    import warnings

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # Class names in a script the font lacks (CJK, ...) are drawn as boxes; not a two-line
    # UserWarning on stderr per missing glyph.
    warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font", category=UserWarning)

    counts, normalized = np.asarray(counts), np.asarray(normalized)
    c = len(names)
    side = min(max(4.5, 0.32 * c + 2.5), 40.0)
    fig = Figure(figsize=(2 * side + 1.5, side + 0.8), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    annotate = c <= 25
    for ax, mat, sub, fmt in ((axes[0], counts, "counts", "{:d}"), (axes[1], normalized, "normalised by true class", "{:.2f}")):
        im = ax.imshow(mat, cmap="Blues", vmin=0, vmax=max(float(mat.max()), 1e-9) if sub == "counts" else 1.0)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        ax.set_title(f"{title}: {sub}", fontsize=10)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        step = max(1, c // 50)
        ticks = list(range(0, c, step))
        ax.set_xticks(ticks)
        ax.set_yticks(ticks)
        fs = 8 if c <= 30 else 6
        ax.set_xticklabels([names[i] for i in ticks], rotation=90, fontsize=fs)
        ax.set_yticklabels([names[i] for i in ticks], fontsize=fs)
        if annotate:
            hi = float(mat.max()) if mat.size else 0.0
            for i in range(c):
                for j in range(c):
                    v = mat[i, j]
                    if v:
                        ax.text(j, i, fmt.format(int(v)) if fmt == "{:d}" else fmt.format(float(v)), ha="center",
                                va="center", fontsize=7, color="white" if v > hi / 2 else "black")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


# --- report.md: templates/report.md.j2 ---------------------------------------------------------
class Md(str):
    """Text that is already markdown (escaped, or a code span): the template prints it as is."""


_MD_SPECIAL = re.compile(r"([\\`|<>\[\]])")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def md_escape(v) -> Md:
    """Untrusted text as markdown text: a backslash before each character that could end a table
    cell (``|``), start a code span, a link or raw HTML, or escape the next one; line breaks
    (which would end a table row) become spaces. ``_`` and ``*`` are left alone: emphasis inside a
    name is cosmetic, and ``best_pt`` stays readable."""
    if isinstance(v, Md):
        return v
    return Md(_MD_SPECIAL.sub(r"\\\1", _LINE_BREAK.sub(" ", str(v))))


def md_code(v, table: bool = False) -> Md:
    """Untrusted text as a code span: fenced by more backticks than it holds in a row; inside a
    table row its ``|`` is escaped too (GFM unescapes ``\\|`` before the span is read)."""
    s = _LINE_BREAK.sub(" ", str(v))
    if table:
        s = s.replace("|", "\\|")
    fence = "`" * (max((len(r) for r in re.findall(r"`+", s)), default=0) + 1)
    pad = " " if s[:1] == "`" or s[-1:] == "`" else ""
    return Md(f"{fence}{pad}{s}{pad}{fence}")


def md_url(v) -> Md:
    """A relative link target: percent-encoded, so spaces, parentheses and brackets cannot end it."""
    from urllib.parse import quote

    return Md(quote(str(v), safe="/._-+~"))


@lru_cache(maxsize=1)
def _md_template():
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("vr.evaluate", "templates"), autoescape=False,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True, finalize=md_escape)
    env.filters.update(pct=percent, num=number, points=points, params=params, code=md_code,
                       url=md_url, md=md_escape)
    return env.get_template("report.md.j2")


def render_markdown(report: dict) -> str:
    """report.md: the models, each model's files and worst/per-class tables, agreement and flips."""
    return _md_template().render(report=report)


# --- the terminal ------------------------------------------------------------------------------
def print_summary(report: dict) -> None:
    """The models table and the agreement lines of `vr eval` (names escaped for rich's markup)."""
    from rich.markup import escape
    from rich.table import Table

    from vr.util.console import console

    pct, num = percent, number
    t = Table(title=f"vr eval · {report['n_images']} images · {escape(str(report['data']))}", title_justify="left")
    for col in ("model", "runtime / provider", "TTA", "top-1", "top-5", "macro F1", "img/s", "p50 ms", "p95 ms"):
        t.add_column(col, justify="left" if col in ("model", "runtime / provider", "TTA") else "right")
    for m in report["models"]:
        lat = m["latency_ms"]
        t.add_row(escape(m["name"]), escape(f"{m['runtime']} / {m['provider']}"), escape(m["tta"]), pct(m["accuracy"]),
                  pct(m["top5"]), pct(m["macro_f1"]), num(m["images_per_second"]), num(lat.get("p50"), ".2f"),
                  num(lat.get("p95"), ".2f"))
    console.print(t)
    for m in report["models"]:
        name = escape(m["name"])
        for d in m.get("members", []):
            console.print(f"{name} member {escape(str(d['path']))} (weight {d['weight']:.3g}): top-1 "
                          f"{pct(d.get('accuracy'))}, differs from the vote on {d.get('differs_from_vote', '-')} images")
        for a in m.get("member_agreement", []):
            console.print(f"{name} members {escape(str(a['a']))} vs {escape(str(a['b']))}: top-1 agreement "
                          f"{pct(a['top1_agreement'])}")
    for a in report["agreement"]:
        console.print(f"{escape(a['a'])} vs {escape(a['b'])}: top-1 agreement {pct(a['top1_agreement'])}, "
                      f"{a['n_flipped']} flipped, max |Δp| {num(a['max_abs_prob_diff'], '.3g')}, "
                      f"Δ top-1 {points(a['deltas']['accuracy'])} pts")
