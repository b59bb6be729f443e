"""report.html: one self-contained page for error analysis (no network resources, opens offline).

It shows the headline metrics of every model and their runtime agreement; per model, the
confusion matrix as a heat map whose cells list their images (hover or click), the worst
classes by F1 each with a strip of misclassified images beside a few correct ones, and a
sortable per-class table; the images whose prediction flips between models; the manifest.

Thumbnails are small JPEG data URIs, each stored once in an embedded JSON table and referenced
by image index. The page stays bounded on big datasets: each confusion cell, worst-class strip
and flip list is capped, and so is the number of thumbnails in all (the caps shrink together
until the total fits; listed images beyond the total show as a named placeholder).

The page is templates/report.html.j2 (Jinja2, autoescape on) with templates/report.css and
report.js inlined, so it loads nothing. Every name (class names, file names, model names, the
manifest) is untrusted text: it reaches the markup only through the template's autoescape or,
inside the JSON, with ``<``, ``>`` and ``&`` as ``\\u`` escapes, and the script puts it in the DOM
with ``textContent``. Python builds plain views (numbers, colours, lists); the template lays them out.
"""

from __future__ import annotations

import base64
import io
import json
import math
from dataclasses import dataclass, replace
from functools import lru_cache, partial
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np


@dataclass(frozen=True)
class HtmlLimits:
    thumb_size: int = 96  # longest side of a thumbnail, pixels
    quality: int = 70  # JPEG quality of a thumbnail
    per_cell: int = 12  # images listed per off-diagonal confusion cell
    per_diagonal: int = 6  # images listed per diagonal (correct) cell
    worst_wrong: int = 10  # misclassified images per worst class
    worst_right: int = 4  # correctly classified images per worst class
    flips: int = 60  # flipped images shown per pair of models
    max_thumbnails: int = 1500  # thumbnails in the whole page (~3 KB each)


def json_for_script(obj: Any) -> str:
    """JSON that cannot end its <script> element or open a comment inside it."""
    s = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return (s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


# --- thumbnails ------------------------------------------------------------------------------
def thumbnail_data_uri(path: str | Path, size: int = 96, quality: int = 70) -> str | None:
    """A JPEG data URI of the image shrunk to fit size x size, or None when it cannot be read."""
    from PIL import Image, ImageOps

    from vr.data.images import to_rgb

    try:
        with Image.open(path) as im:
            im.draft("RGB", (size, size))  # JPEG: decode at a reduced scale that still covers size
            im = ImageOps.exif_transpose(im)
            im = to_rgb(im)
            im.thumbnail((size, size), Image.BICUBIC)
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=quality, optimize=True)
    except Exception:  # unreadable, truncated, a decompression bomb: the page shows a placeholder
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def make_thumbnails(paths: Sequence[Path], indices: Sequence[int], size: int, quality: int,
                    workers: int = 2) -> dict[int, str]:
    """{index: data URI} for the given indices into ``paths`` (decoded in threads: PIL drops the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    idx = list(indices)
    if not idx:
        return {}
    with ThreadPoolExecutor(max_workers=max(1, min(8, workers))) as pool:
        uris = list(pool.map(lambda k: thumbnail_data_uri(paths[k], size, quality), idx))
    return {k: u for k, u in zip(idx, uris) if u is not None}


# --- what the page shows ---------------------------------------------------------------------
@dataclass
class ModelView:
    labels: list[str]
    true: np.ndarray  # [N] index into labels
    pred: np.ndarray  # [N]
    conf: np.ndarray  # [N] probability of the predicted class


def model_view(labels: Sequence[str], true_names: Sequence[str], probs: np.ndarray) -> ModelView:
    index = {n: i for i, n in enumerate(labels)}
    probs = np.asarray(probs)
    return ModelView(list(labels), np.array([index[t] for t in true_names], dtype=np.int64),
                     probs.argmax(axis=1).astype(np.int64), np.nan_to_num(probs.max(axis=1).astype(np.float64)))


def _plan(report: dict, views: Sequence[ModelView], index_of: dict[str, int], lim: HtmlLimits) -> dict:
    """Which images each part of the page lists, most confident first, within the caps."""
    models = []
    for m, v in zip(report["models"], views):
        order = np.argsort(-v.conf, kind="stable")
        t, p = v.true[order], v.pred[order]
        cells: dict[str, list] = {}
        buckets: dict[tuple[int, int], list[int]] = {}
        for k, i, j in zip(order.tolist(), t.tolist(), p.tolist()):
            buckets.setdefault((i, j), []).append(k)
        for (i, j), ks in buckets.items():
            cap = lim.per_diagonal if i == j else lim.per_cell
            cells[f"{i},{j}"] = [len(ks), ks[:cap]]
        worst = []
        for w in m.get("worst_classes", []):
            c = v.labels.index(w["class"])
            wrong_mask = (t == c) & (p != c)  # its images the model got wrong
            wrong = order[wrong_mask][:lim.worst_wrong].tolist()
            right = order[(t == c) & (p == c)][:lim.worst_right].tolist()
            worst.append({"w": w, "wrong": wrong, "n_wrong": int(wrong_mask.sum()), "right": right})
        models.append({"cells": cells, "worst": worst})
    flips = []
    for a in report.get("agreement", []):
        flips.append([index_of[f["image"]] for f in a["flipped"][:lim.flips]])
    return {"models": models, "flips": flips}


def _thumbnail_order(plan: dict) -> list[int]:
    """Images in priority order: worst-class strips, flips, confusion errors, correct cells."""
    seen: dict[int, None] = {}
    for m in plan["models"]:
        for w in m["worst"]:
            seen.update(dict.fromkeys(w["wrong"] + w["right"]))
    for f in plan["flips"]:
        seen.update(dict.fromkeys(f))
    for diagonal in (False, True):
        for m in plan["models"]:
            for key, (_, ks) in m["cells"].items():
                i, j = key.split(",")
                if (i == j) == diagonal:
                    seen.update(dict.fromkeys(ks))
    return list(seen)


def plan_page(report: dict, views: Sequence[ModelView], images: Sequence[str], lim: HtmlLimits) -> tuple[dict, list[int]]:
    """The plan and the images to make thumbnails of: the caps are halved together until the
    thumbnails fit ``max_thumbnails``; past the smallest caps the list is cut in priority order."""
    index_of = {img: k for k, img in enumerate(images)}
    scaled = lim
    while True:
        plan = _plan(report, views, index_of, scaled)
        order = _thumbnail_order(plan)
        caps = (scaled.per_cell, scaled.per_diagonal, scaled.worst_wrong, scaled.worst_right, scaled.flips)
        if len(order) <= lim.max_thumbnails or max(caps) <= 1:
            return plan, order[:max(0, lim.max_thumbnails)]
        scaled = replace(scaled, **{f: max(1, getattr(scaled, f) // 2) for f in
                                    ("per_cell", "per_diagonal", "worst_wrong", "worst_right", "flips")})


# --- rendering: views of the report for templates/report.html.j2 -------------------------------
BLUE, RED = (29, 78, 216), (220, 38, 38)
DASH = "–"  # what a missing value shows as on the page


def _mix(rgb: tuple[int, int, int], a: float) -> str:
    a = min(1.0, max(0.0, a))
    r, g, b = (round(255 + (c - 255) * a) for c in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


def _figure(k: int, v: ModelView, images: Sequence[str], thumbs: dict[int, str]) -> dict:
    true, pred = v.labels[v.true[k]], v.labels[v.pred[k]]
    return {"k": k, "name": images[k], "thumb": k in thumbs, "ok": true == pred, "true": true, "pred": pred,
            "conf": float(v.conf[k])}


def _heatmap_view(mi: int, m: dict, plan_cells: dict) -> dict:
    """The confusion matrix as rows of cells: counts, colour (blue diagonal, red errors, shaded by the
    share of the true class) and a tooltip."""
    cm = m["confusion_matrix"]
    labels, counts, norm = cm["labels"], cm["counts"], cm["normalized"]
    c = len(labels)
    rows = []
    for i, name in enumerate(labels):
        support = sum(counts[i])
        cells = []
        for j in range(c):
            n, v = counts[i][j], float(norm[i][j])
            tip = (f"true {name} → predicted {labels[j]}: {n} image{'s' if n != 1 else ''}"
                   + (f" ({100 * v:.1f}% of {name})" if support else ""))
            if n == 0:
                cells.append({"n": 0, "tip": tip})
                continue
            diag = i == j
            a = v if diag else min(1.0, 0.15 + math.sqrt(v))
            cells.append({"n": n, "tip": tip, "i": i, "j": j, "diag": diag, "colour": _mix(BLUE if diag else RED, a),
                          "ink": "#fff" if a > 0.55 else "#111", "listed": len(plan_cells.get(f"{i},{j}", [0, []])[1])})
        rows.append({"name": name, "cells": cells})
    return {"mi": mi, "labels": labels, "rows": rows, "show_counts": c <= 30, "show_labels": c <= 60,
            "size": "l" if c <= 12 else "m" if c <= 30 else "s" if c <= 60 else "xs",
            "correct": _mix(BLUE, 0.8), "errors": _mix(RED, 0.8)}


def _worst_view(plan_m: dict, v: ModelView, images: Sequence[str], thumbs: dict[int, str]) -> list[dict]:
    out = []
    for w in plan_m["worst"]:
        more = w["n_wrong"] - len(w["wrong"])
        out.append({"d": w["w"], "wrong": [_figure(k, v, images, thumbs) for k in w["wrong"]],
                    "right": [_figure(k, v, images, thumbs) for k in w["right"]],
                    "shown": f"{len(w['wrong'])} most confident of {w['n_wrong']}" if more > 0 else str(w["n_wrong"])})
    return out


def _per_class_view(m: dict) -> list[dict]:
    counts = m["confusion_matrix"]["counts"]
    predicted = [sum(col) for col in zip(*counts)] if counts else []
    rows = []
    for i, (name, d) in enumerate(m["per_class"].items()):
        f1 = d["f1"]
        tone = "low" if d["support"] and f1 < 0.5 else "mid" if d["support"] and f1 < 0.8 else ""
        rows.append({"name": name, "precision": d["precision"], "recall": d["recall"], "f1": f1, "tone": tone,
                     "support": d["support"], "predicted": predicted[i] if i < len(predicted) else 0})
    return rows


def _flips_view(report: dict, plan: dict, images: Sequence[str], thumbs: dict[int, str]) -> list[dict]:
    out = []
    for a, ks in zip(report.get("agreement", []), plan["flips"]):
        figs = [{"k": k, "name": images[k], "thumb": k in thumbs, "true": f["true_label"], "a_pred": f["a_pred"],
                 "a_conf": f["a_confidence"], "b_pred": f["b_pred"], "b_conf": f["b_confidence"]}
                for f, k in zip(a["flipped"], ks)]
        out.append({"a": a["a"], "b": a["b"], "n_flipped": a["n_flipped"], "n_images": a["n_images"],
                    "figs": figs, "more": a["n_flipped"] - len(ks)})
    return out


def _manifest_view(man: dict | None) -> dict | None:
    if not man:
        return None
    v, dev, prov = man.get("versions", {}), man.get("device", {}), man.get("providers")
    keys = ("vr", "python", "torch", "torchvision", "timm", "onnx", "onnxruntime", "tensorrt")
    shown = {"vr": "vr", "python": "Python"}
    providers = None
    if isinstance(prov, dict):
        providers = [(k, p.get("runtime", ""), ", ".join(p.get("execution_providers", []))) if isinstance(p, dict)
                     else (k, "", str(p)) for k, p in prov.items()]
    return {"versions": [(shown.get(k, k), "not installed" if v.get(k) is None else v.get(k)) for k in keys],
            "device": dev.get("name", ""), "cpu": str(dev.get("cpu")) if dev.get("cuda") else None,
            "platform": man.get("platform", ""), "providers": providers,
            "provider_text": None if isinstance(prov, dict) or not prov else str(prov),
            "command": " ".join(man.get("command", [])), "created": man.get("created", ""),
            "config": json.dumps(man.get("config", {}), indent=2, ensure_ascii=False)}


def _page_data(report: dict, views: Sequence[ModelView], images: Sequence[str], plan: dict,
               thumbs: dict[int, str]) -> dict:
    """The JSON table the page's script reads: thumbnails, image names and each confusion cell's list."""
    referenced = set(thumbs)
    for m in plan["models"]:
        for _, ks in m["cells"].values():
            referenced.update(ks)
    return {
        "thumbs": {str(k): u for k, u in thumbs.items()},
        "images": {str(k): images[k] for k in sorted(referenced)},
        "models": [{"name": m["name"], "labels": v.labels,
                    "cells": {key: [n, [[k, round(float(v.conf[k]), 4)] for k in ks]]
                              for key, (n, ks) in pm["cells"].items()}}
                   for m, v, pm in zip(report["models"], views, plan["models"])],
    }


@lru_cache(maxsize=1)
def _template():
    """The page template, autoescaped, with the page's number formats as filters."""
    import jinja2

    from vr.util import fmt

    env = jinja2.Environment(loader=jinja2.PackageLoader("vr.evaluate", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(pct=partial(fmt.percent, digits=1, none=DASH), num=partial(fmt.number, none=DASH),
                       points=partial(fmt.points, none=DASH), params=partial(fmt.params, none=DASH))
    return env.get_template("report.html.j2")


def _asset(name: str) -> str:
    return resources.files("vr.evaluate").joinpath("templates", name).read_text(encoding="utf-8")


def render_html(report: dict, views: Sequence[ModelView], images: Sequence[str], plan: dict,
                thumbs: dict[int, str], manifest: dict | None = None) -> str:
    """The page as one string (the thumbnails are already data URIs, the CSS and JS inlined)."""
    from markupsafe import Markup

    sections = [{"mi": i, "m": m, "n_classes": len(v.labels), "heatmap": _heatmap_view(i, m, pm["cells"]),
                 "worst": _worst_view(pm, v, images, thumbs), "per_class": _per_class_view(m)}
                for i, (m, v, pm) in enumerate(zip(report["models"], views, plan["models"]))]
    data = report.get("data", "")
    return _template().render(
        report=report, sections=sections, skipped=report.get("skipped") or [],
        flip_pairs=_flips_view(report, plan, images, thumbs), man=_manifest_view(manifest),
        title=f"vr eval · {Path(str(data)).name or data}",
        # the only unescaped text: vr's own files, and JSON whose <, > and & are \u escapes
        css=Markup(_asset("report.css")), js=Markup(_asset("report.js")),
        data_json=Markup(json_for_script(_page_data(report, views, images, plan, thumbs))))


def write_html_report(path: str | Path, report: dict, paths: Sequence[Path], images: Sequence[str],
                      true_names: Sequence[str], probs: Sequence[np.ndarray], manifest: dict | None = None,
                      limits: HtmlLimits = HtmlLimits(), workers: int = 2) -> dict:
    """Write report.html atomically; returns {"thumbnails": n, "bytes": size}."""
    from vr.util.io import atomic_write_text

    views = [model_view(m["confusion_matrix"]["labels"], true_names, p) for m, p in zip(report["models"], probs)]
    plan, wanted = plan_page(report, views, images, limits)
    thumbs = make_thumbnails(paths, wanted, limits.thumb_size, limits.quality, workers)
    page = render_html(report, views, images, plan, thumbs, manifest)
    atomic_write_text(path, page)
    return {"thumbnails": len(thumbs), "bytes": len(page.encode("utf-8"))}
