"""report.html: one self-contained page for error analysis (no network resources, opens offline).

It shows the headline metrics of every model and their runtime agreement; per model, the
confusion matrix as a heat map whose cells list their images (hover or click), the worst
classes by F1 each with a strip of misclassified images beside a few correct ones, and a
sortable per-class table; the images whose prediction flips between models; the manifest.

Thumbnails are small JPEG data URIs, each stored once in an embedded JSON table and referenced
by image index. The page stays bounded on big datasets: each confusion cell, worst-class strip
and flip list is capped, and so is the number of thumbnails in all (the caps shrink together
until the total fits; listed images beyond the total show as a named placeholder).

Every name (class names, file names, model names, the manifest) is untrusted text: it reaches
the page only through ``html.escape`` or, inside the JSON, with ``<``, ``>`` and ``&`` as
``\\u`` escapes, and the script puts it in the DOM with ``textContent``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass, replace
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


def e(v: Any) -> str:
    """Escape for HTML text and (double-quoted) attribute values."""
    return html.escape(str(v), quote=True)


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


# --- rendering -------------------------------------------------------------------------------
def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _num(v, fmt="{:.1f}") -> str:
    return "–" if v is None else fmt.format(v)


def _mix(rgb: tuple[int, int, int], a: float) -> str:
    a = min(1.0, max(0.0, a))
    r, g, b = (round(255 + (c - 255) * a) for c in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


BLUE, RED = (29, 78, 216), (220, 38, 38)


def _figure(k: int, images: Sequence[str], thumbs: dict[int, str], true: str, pred: str, conf: float,
            extra: str = "") -> str:
    ok = true == pred
    pic = (f'<img data-t="{k}" alt="{e(images[k])}">' if k in thumbs else
           '<div class="noimg">no preview</div>')
    return (f'<figure class="th {"ok" if ok else "bad"}" title="{e(images[k])}">{pic}<figcaption>'
            f'<span class="tl">{e(true)}</span><span class="arrow">→</span><span class="pl">{e(pred)}</span>'
            f'<span class="cf">{conf:.2f}</span>{extra}</figcaption></figure>')


def _summary(report: dict) -> str:
    rows = []
    for m in report["models"]:
        lat = m.get("latency_ms") or {}
        rows.append(
            f'<tr><td class="name">{e(m["name"])}</td><td>{e(m["runtime"])}<div class="sub">{e(m["provider"])}</div></td>'
            f'<td>{e(m["tta"])}</td><td class="num big">{_pct(m["accuracy"])}</td><td class="num">{_pct(m["top5"])}</td>'
            f'<td class="num big">{_pct(m["macro_f1"])}</td><td class="num">{_pct(m["weighted_f1"])}</td>'
            f'<td class="num">{_pct(m["macro_precision"])}</td><td class="num">{_pct(m["macro_recall"])}</td>'
            f'<td class="num">{_num(m.get("images_per_second"))}</td>'
            f'<td class="num">{_num(lat.get("p50"), "{:.1f}")} / {_num(lat.get("p95"), "{:.1f}")}</td></tr>')
    head = ("<tr><th>model</th><th>runtime / provider</th><th>TTA</th><th>top-1</th><th>top-5</th><th>macro F1</th>"
            "<th>weighted F1</th><th>macro P</th><th>macro R</th><th>img/s</th><th>ms per batch p50 / p95</th></tr>")
    out = [f'<table class="summary" id="summary"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>']
    pairs = report.get("agreement", [])
    if pairs:
        prow = []
        for a in pairs:
            d = a.get("deltas", {})
            prow.append(
                f'<tr><td class="name">{e(a["a"])}</td><td class="name">{e(a["b"])}</td>'
                f'<td class="num big">{_pct(a["top1_agreement"])}</td><td class="num">{a["n_flipped"]}</td>'
                f'<td class="num">{_num(a.get("max_abs_prob_diff"), "{:.3g}")}</td>'
                f'<td class="num">{_num(a.get("mean_abs_prob_diff"), "{:.3g}")}</td>'
                f'<td class="num">{_num(100 * d["accuracy"], "{:+.2f}") if "accuracy" in d else "–"}</td>'
                f'<td class="num">{_num(100 * d["macro_f1"], "{:+.2f}") if "macro_f1" in d else "–"}</td></tr>')
        out.append('<h3>Runtime agreement</h3><table class="summary" id="agreement"><thead><tr><th>a</th><th>b</th>'
                   '<th>top-1 agreement</th><th>flipped</th><th>max |Δp|</th><th>mean |Δp|</th><th>Δ top-1 (pts)</th>'
                   f'<th>Δ macro F1 (pts)</th></tr></thead><tbody>{"".join(prow)}</tbody></table>')
    else:
        out.append('<p class="muted">One model: give several (a .pt and its .onnx, say) to compare runtimes.</p>')
    return "\n".join(out)


def _heatmap(mi: int, m: dict, plan_cells: dict) -> str:
    cm = m["confusion_matrix"]
    labels, counts, norm = cm["labels"], cm["counts"], cm["normalized"]
    c = len(labels)
    size = "l" if c <= 12 else "m" if c <= 30 else "s" if c <= 60 else "xs"
    show_counts, show_labels = c <= 30, c <= 60
    head = ['<th class="corner">true ↓ · predicted →</th>']
    for j, name in enumerate(labels):
        head.append(f'<th class="col" title="{e(name)}"><span>{e(name) if show_labels else ""}</span></th>')
    rows = []
    for i, name in enumerate(labels):
        tds = [f'<th class="row" title="{e(name)}">{e(name) if show_labels else ""}</th>']
        support = sum(counts[i])
        for j in range(c):
            n, v = counts[i][j], float(norm[i][j])
            tip = (f"true {name} → predicted {labels[j]}: {n} image{'s' if n != 1 else ''}"
                   + (f" ({100 * v:.1f}% of {name})" if support else ""))
            if n == 0:
                tds.append(f'<td class="z" title="{e(tip)}"></td>')
                continue
            diag = i == j
            a = v if diag else min(1.0, 0.15 + math.sqrt(v))
            colour = _mix(BLUE if diag else RED, a)
            ink = "#fff" if a > 0.55 else "#111"
            listed = len(plan_cells.get(f"{i},{j}", [0, []])[1])
            tds.append(f'<td class="c {"d" if diag else "o"}" data-m="{mi}" data-i="{i}" data-j="{j}" data-n="{n}" '
                       f'data-listed="{listed}" tabindex="0" style="background:{colour};color:{ink}" '
                       f'title="{e(tip)}">{n if show_counts else ""}</td>')
        rows.append(f'<tr>{"".join(tds)}</tr>')
    return (f'<div class="cm-wrap"><div class="cm-scroll"><table class="cm cm-{size}" id="cm-{mi}">'
            f'<thead><tr>{"".join(head)}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
            f'<p class="legend"><span class="sw" style="background:{_mix(BLUE, 0.8)}"></span>correct '
            f'<span class="sw" style="background:{_mix(RED, 0.8)}"></span>errors · shade: share of the true class '
            f'(row)</p></div>'
            f'<div class="cm-panel" id="cm-panel-{mi}" aria-live="polite"><p class="muted">Hover over a cell to '
            f'list its images; click to keep the list (most confident first).</p></div></div>')


def _worst(m: dict, plan_m: dict, v: ModelView, images: Sequence[str], thumbs: dict[int, str]) -> str:
    if not plan_m["worst"]:
        return ""
    out = [f'<h3>Worst {len(plan_m["worst"])} classes by F1</h3>']
    for w in plan_m["worst"]:
        d = w["w"]
        conf = (f' · most confused with <b>{e(d["most_confused_with"])}</b> ({d["most_confused_count"]})'
                if d.get("most_confused_with") else "")
        figs_wrong = "".join(_figure(k, images, thumbs, v.labels[v.true[k]], v.labels[v.pred[k]], float(v.conf[k]))
                             for k in w["wrong"])
        figs_right = "".join(_figure(k, images, thumbs, v.labels[v.true[k]], v.labels[v.pred[k]], float(v.conf[k]))
                             for k in w["right"])
        more = w["n_wrong"] - len(w["wrong"])
        shown = f"{len(w['wrong'])} most confident of {w['n_wrong']}" if more > 0 else str(w["n_wrong"])
        out.append(
            f'<div class="worst"><div class="whead"><span class="cls">{e(d["class"])}</span> F1 {_pct(d["f1"])} · '
            f'precision {_pct(d["precision"])} · recall {_pct(d["recall"])} · {d["support"]} images{conf}</div>'
            f'<div class="strips"><div class="strip wrong"><div class="slabel">misclassified: {shown}</div>'
            f'<div class="figs">{figs_wrong or "<span class=muted>none</span>"}</div></div>'
            f'<div class="strip right"><div class="slabel">correct, most confident</div>'
            f'<div class="figs">{figs_right or "<span class=muted>none</span>"}</div></div></div></div>')
    return "\n".join(out)


def _per_class(mi: int, m: dict) -> str:
    cm = m["confusion_matrix"]
    predicted = [sum(col) for col in zip(*cm["counts"])] if cm["counts"] else []
    rows = []
    for i, (name, d) in enumerate(m["per_class"].items()):
        f1 = d["f1"]
        tone = "low" if d["support"] and f1 < 0.5 else "mid" if d["support"] and f1 < 0.8 else ""
        rows.append(f'<tr data-i="{i}"><td class="name">{e(name)}</td>'
                    f'<td class="num" data-v="{d["precision"]:.6f}">{_pct(d["precision"])}</td>'
                    f'<td class="num" data-v="{d["recall"]:.6f}">{_pct(d["recall"])}</td>'
                    f'<td class="num f1 {tone}" data-v="{f1:.6f}"><span class="bar" style="width:{100 * f1:.0f}%">'
                    f'</span><span class="val">{_pct(f1)}</span></td>'
                    f'<td class="num" data-v="{d["support"]}">{d["support"]}</td>'
                    f'<td class="num" data-v="{predicted[i] if i < len(predicted) else 0}">'
                    f'{predicted[i] if i < len(predicted) else 0}</td></tr>')
    return (f'<h3>Per class</h3><p class="muted">Click a column heading to sort (again to reverse).</p>'
            f'<table class="sortable perclass" id="perclass-{mi}"><thead><tr><th data-type="text">class</th>'
            f'<th data-type="num">precision</th><th data-type="num">recall</th><th data-type="num">F1</th>'
            f'<th data-type="num">support</th><th data-type="num">predicted</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _flips(report: dict, plan: dict, images: Sequence[str], thumbs: dict[int, str]) -> str:
    pairs = report.get("agreement", [])
    if not pairs:
        return ""
    out = ['<section id="flips"><h2>Predictions that flip between models</h2>']
    for a, ks in zip(pairs, plan["flips"]):
        out.append(f'<h3>{e(a["a"])} vs {e(a["b"])}: {a["n_flipped"]} flipped of {a["n_images"]}</h3>')
        if not a["flipped"]:
            out.append('<p class="muted">None: both give the same top-1 class for every image.</p>')
            continue
        figs = []
        for f, k in zip(a["flipped"], ks):
            extra = (f'<span class="flip"><span class="mn">{e(a["a"])}</span> {e(f["a_pred"])} {f["a_confidence"]:.2f}'
                     f'</span><span class="flip"><span class="mn">{e(a["b"])}</span> {e(f["b_pred"])} '
                     f'{f["b_confidence"]:.2f}</span>')
            pic = (f'<img data-t="{k}" alt="{e(images[k])}">' if k in thumbs else '<div class="noimg">no preview</div>')
            figs.append(f'<figure class="th flipfig" title="{e(images[k])}">{pic}<figcaption>'
                        f'<span class="tl">true {e(f["true_label"])}</span>{extra}</figcaption></figure>')
        more = a["n_flipped"] - len(ks)
        out.append(f'<div class="figs">{"".join(figs)}</div>'
                   + (f'<p class="muted">… and {more} more (all in report.json)</p>' if more > 0 else ""))
    out.append("</section>")
    return "\n".join(out)


def _members(m: dict) -> str:
    """An ensemble's members and how much they agree: when they always agree, voting cannot help."""
    if not m.get("members"):
        return ""
    rows = "".join(
        f'<tr><td class="path">{e(d["path"])}</td><td>{d["weight"]:.3g}</td><td>{e(d.get("runtime", ""))}</td>'
        f'<td>{_num(d["param_count"] / 1e6, "{:.2f}M") if d.get("param_count") else "–"}</td>'
        f'<td>{_pct(d.get("accuracy"))}</td><td>{_pct(d.get("macro_f1"))}</td>'
        f'<td>{e(d.get("differs_from_vote", "–"))}</td></tr>' for d in m["members"])
    pairs = "".join(f'<tr><td class="path">{e(a["a"])}</td><td class="path">{e(a["b"])}</td>'
                    f'<td>{_pct(a["top1_agreement"])}</td><td>{a["n_disagree"]}</td></tr>'
                    for a in m.get("member_agreement", []))
    return (f'<h3>Ensemble members ({len(m["members"])}, soft vote)</h3>'
            '<table class="summary"><thead><tr><th>member</th><th>weight</th><th>runtime</th><th>params</th><th>top-1</th>'
            f'<th>macro F1</th><th>differs from the vote</th></tr></thead><tbody>{rows}</tbody></table>'
            f'<p>Ensemble top-1 {_pct(m.get("accuracy"))}; at least one member right on '
            f'{_pct(m.get("any_member_correct"))} of the images.</p>'
            + ('<table class="summary"><thead><tr><th>member a</th><th>member b</th><th>top-1 agreement</th>'
               f'<th>images that differ</th></tr></thead><tbody>{pairs}</tbody></table>' if pairs else ""))


def _manifest(man: dict | None) -> str:
    if not man:
        return ""
    v = man.get("versions", {})
    dev = man.get("device", {})
    rows = [("vr", v.get("vr")), ("Python", v.get("python"))]
    rows += [(k, v.get(k)) for k in ("torch", "torchvision", "timm", "onnx", "onnxruntime", "tensorrt")]
    items = "".join(f'<span class="kv"><b>{e(k)}</b> {e(val if val is not None else "not installed")}</span>'
                    for k, val in rows)
    prov = man.get("providers")
    prov_html = ""
    if isinstance(prov, dict):
        prov_html = "".join(
            f'<li><b>{e(k)}</b>: {e(p.get("runtime", "") if isinstance(p, dict) else "")} on '
            f'{e(", ".join(p.get("execution_providers", [])) if isinstance(p, dict) else p)}</li>'
            for k, p in prov.items())
        prov_html = f"<ul>{prov_html}</ul>"
    elif prov:
        prov_html = f"<p>{e(prov)}</p>"
    cfg = json.dumps(man.get("config", {}), indent=2, ensure_ascii=False)
    cmd = " ".join(man.get("command", []))
    return (f'<footer id="manifest"><h2>Manifest</h2><div class="kvs">{items}</div>'
            f'<p><b>device</b> {e(dev.get("name", ""))}'
            f'{" · CPU " + e(dev.get("cpu")) if dev.get("cuda") else ""} · {e(man.get("platform", ""))}</p>'
            f'<div><b>execution providers</b>{prov_html}</div>'
            f'<p><b>command</b> <code>{e(cmd)}</code></p><p><b>created</b> {e(man.get("created", ""))}</p>'
            f'<details><summary>config</summary><pre>{e(cfg)}</pre></details>'
            f'<p class="muted">Also in manifest.json beside this page.</p></footer>')


def render_html(report: dict, views: Sequence[ModelView], images: Sequence[str], plan: dict,
                thumbs: dict[int, str], manifest: dict | None = None) -> str:
    """The page as one string (the thumbnails are already data URIs)."""
    referenced = set(thumbs)
    for m in plan["models"]:
        for _, ks in m["cells"].values():
            referenced.update(ks)
    data = {
        "thumbs": {str(k): u for k, u in thumbs.items()},
        "images": {str(k): images[k] for k in sorted(referenced)},
        "models": [{"name": m["name"], "labels": v.labels,
                    "cells": {key: [n, [[k, round(float(v.conf[k]), 4)] for k in ks]]
                              for key, (n, ks) in pm["cells"].items()}}
                   for m, v, pm in zip(report["models"], views, plan["models"])],
    }
    multi = len(report["models"]) > 1
    tabs = ""
    if multi:
        tabs = ('<nav class="tabs" aria-label="model">' + "".join(
            f'<button type="button" data-m="{i}" class="{"active" if i == 0 else ""}">{e(m["name"])}</button>'
            for i, m in enumerate(report["models"])) + "</nav>")
    sections = []
    for i, (m, v, pm) in enumerate(zip(report["models"], views, plan["models"])):
        notes = "".join(f'<p class="note">note: {e(n)}</p>' for n in m.get("notes", []))
        sections.append(
            f'<section class="model" data-m="{i}"{" hidden" if i else ""}>'
            f'<h2>{e(m["name"])} <span class="sub">{e(m["runtime"])} on {e(m["provider"])} · TTA {e(m["tta"])} · '
            f'{len(v.labels)} classes</span></h2><p class="path">{e(m["path"])}</p>{notes}{_members(m)}'
            f'<h3>Confusion matrix</h3>{_heatmap(i, m, pm["cells"])}'
            f'{_worst(m, pm, v, images, thumbs)}{_per_class(i, m)}</section>')
    skipped = report.get("skipped") or []
    skipped_html = (f'<p class="note">{len(skipped)} unreadable image(s) skipped: '
                    f'{e("; ".join(skipped[:5]))}{" …" if len(skipped) > 5 else ""}</p>' if skipped else "")
    title = f"vr eval · {Path(str(report.get('data', ''))).name or report.get('data', '')}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>{e(title)}</title>
<style>{CSS}</style></head>
<body>
<header><h1>vr eval report</h1>
<p class="meta"><span class="path">{e(report.get("data", ""))}</span> · {report.get("n_images", 0)} images ·
{len(report.get("data_classes", []))} classes · {e(report.get("created", ""))}</p>{skipped_html}</header>
<main>
<section id="overview"><h2>Headline metrics</h2>{_summary(report)}</section>
{tabs}
{"".join(sections)}
{_flips(report, plan, images, thumbs)}
</main>
{_manifest(manifest)}
<script type="application/json" id="vr-data">{json_for_script(data)}</script>
<script>{JS}</script>
</body></html>
"""


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


CSS = """
:root{--ink:#1f2328;--muted:#656d76;--line:#d8dee4;--bg:#f6f8fa;--accent:#1d4ed8;--bad:#dc2626;--ok:#15803d}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:var(--ink);background:#fff}
header{padding:18px 28px 8px;border-bottom:1px solid var(--line);background:var(--bg)}
h1{margin:0 0 4px;font-size:22px}
h2{font-size:18px;margin:28px 0 10px;padding-bottom:4px;border-bottom:1px solid var(--line)}
h3{font-size:15px;margin:20px 0 8px}
main{padding:0 28px 20px;max-width:1400px}
.meta,.path{color:var(--muted);margin:2px 0}
.path{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px;word-break:break-all}
.sub{color:var(--muted);font-weight:normal;font-size:13px}
.muted{color:var(--muted)}
.note{background:#fff8c5;border:1px solid #eed888;padding:4px 8px;border-radius:6px}
table{border-collapse:collapse}
table.summary,table.perclass{font-size:13px;margin:4px 0 8px}
table.summary th,table.summary td,table.perclass th,table.perclass td{padding:5px 10px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
table.summary th,table.perclass th{background:var(--bg);font-weight:600;white-space:nowrap}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.big{font-weight:600;font-size:14px}
td.name{font-weight:600;word-break:break-word;max-width:340px}
td .sub{font-size:12px}
.tabs{position:sticky;top:0;z-index:5;background:#fff;padding:10px 0;border-bottom:1px solid var(--line);margin-top:18px}
.tabs button{font:inherit;border:1px solid var(--line);background:var(--bg);padding:5px 12px;border-radius:6px;margin-right:6px;cursor:pointer}
.tabs button.active{background:var(--accent);color:#fff;border-color:var(--accent)}
.cm-wrap{display:flex;gap:24px;align-items:flex-start;flex-wrap:wrap}
.cm-scroll{overflow:auto;max-width:100%}
table.cm td,table.cm th{padding:0;text-align:center}
table.cm td{border:1px solid #fff;font-variant-numeric:tabular-nums;font-weight:600}
table.cm td.z{background:#f3f4f6}
table.cm td.c{cursor:pointer}
table.cm td.c:hover,table.cm td.c:focus,table.cm td.sel{outline:3px solid #111;outline-offset:-3px}
table.cm th.row{text-align:right;padding-right:8px;font-weight:500;white-space:nowrap;max-width:200px;overflow:hidden;text-overflow:ellipsis}
table.cm th.col{vertical-align:bottom;font-weight:500;height:auto}
table.cm th.col span{writing-mode:vertical-rl;transform:rotate(180deg);white-space:nowrap;display:inline-block;max-height:160px;overflow:hidden;text-overflow:ellipsis;padding-bottom:4px}
table.cm th.corner{font-size:11px;color:var(--muted);font-weight:normal;text-align:right;vertical-align:bottom;padding:0 8px 6px 0;white-space:nowrap}
.cm-l td{width:64px;height:64px;font-size:16px}.cm-m td{width:30px;height:30px;font-size:11px}
.cm-s td{width:14px;height:14px}.cm-xs td{width:8px;height:8px;border-width:0!important}
.cm-s th.row,.cm-xs th.row{font-size:10px}
.legend{color:var(--muted);font-size:12px}.sw{display:inline-block;width:12px;height:12px;vertical-align:-2px;margin:0 4px 0 10px;border-radius:2px}
.cm-panel{position:sticky;top:64px;flex:1 1 360px;min-width:320px;max-width:760px;border:1px solid var(--line);border-radius:8px;padding:10px 12px;background:var(--bg);min-height:120px}
.cm-panel h4{margin:0 0 8px;font-size:14px}
.figs{display:flex;flex-wrap:wrap;gap:8px}
figure.th{margin:0;width:112px;background:#fff;border:1px solid var(--line);border-radius:6px;padding:4px;font-size:11px;line-height:1.3}
figure.th.bad{border-color:#f3b0b0;box-shadow:inset 0 -3px 0 var(--bad)}
figure.th.ok{box-shadow:inset 0 -3px 0 var(--ok)}
figure.th img,figure.th .noimg{display:block;width:102px;height:96px;object-fit:contain;background:#eef1f4;border-radius:3px}
figure.th img.px{image-rendering:pixelated}
figure.th .noimg{display:flex;align-items:center;justify-content:center;color:var(--muted);font-size:11px}
figcaption{margin-top:3px;overflow:hidden}
figcaption span{display:inline-block;max-width:100%;overflow:hidden;text-overflow:ellipsis;white-space:nowrap;vertical-align:bottom}
figcaption .tl{font-weight:600}figcaption .arrow{color:var(--muted);margin:0 3px}
figure.bad .pl{color:var(--bad);font-weight:600}figure.ok .pl{color:var(--ok)}
figcaption .cf{display:block;color:var(--muted)}
figcaption .flip{display:block}figcaption .mn{color:var(--muted)}
figure.flipfig{width:140px}figure.flipfig img,figure.flipfig .noimg{width:130px}
.worst{border:1px solid var(--line);border-radius:8px;padding:10px 12px;margin:10px 0}
.whead{margin-bottom:8px}.whead .cls{font-weight:700;font-size:15px;margin-right:8px}
.strips{display:grid;grid-template-columns:minmax(0,1fr) auto;gap:18px;align-items:start}.strip.right{border-left:1px dashed var(--line);padding-left:14px}.strip.right .figs{max-width:248px}
.slabel{font-size:12px;color:var(--muted);margin-bottom:6px;text-transform:uppercase;letter-spacing:.04em}
table.sortable th{cursor:pointer;user-select:none}
table.sortable th::after{content:" ↕";color:#aab}
table.sortable th[aria-sort=ascending]::after{content:" ↑";color:var(--ink)}
table.sortable th[aria-sort=descending]::after{content:" ↓";color:var(--ink)}
td.f1{position:relative;min-width:110px}
td.f1 .bar{position:absolute;left:0;top:4px;bottom:4px;background:#dbeafe;border-radius:2px;z-index:0}
td.f1.mid .bar{background:#fde68a}td.f1.low .bar{background:#fecaca}
td.f1 .val{position:relative;z-index:1}
footer{margin-top:30px;padding:8px 28px 24px;background:var(--bg);border-top:1px solid var(--line);font-size:12.5px;color:#333}
footer h2{font-size:15px}
footer .kvs{display:flex;flex-wrap:wrap;gap:4px 16px}
footer code,footer pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px;word-break:break-all;white-space:pre-wrap}
footer ul{margin:4px 0}
"""

JS = r"""
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("vr-data").textContent);
  function pixelate() {  // tiny images (digits) stay crisp when enlarged
    if (this.naturalWidth < 64 && this.naturalHeight < 64) this.classList.add("px");
  }
  function el(tag, cls, text) {
    var x = document.createElement(tag);
    if (cls) x.className = cls;
    if (text !== undefined) x.textContent = text;
    return x;
  }
  // thumbnails: stored once in the JSON, referenced by image index
  Array.prototype.forEach.call(document.querySelectorAll("img[data-t]"), function (im) {
    var u = D.thumbs[im.getAttribute("data-t")];
    if (u) { im.addEventListener("load", pixelate); im.src = u; }
  });
  // model tabs
  var tabs = document.querySelectorAll(".tabs button");
  Array.prototype.forEach.call(tabs, function (b) {
    b.addEventListener("click", function () {
      var m = b.getAttribute("data-m");
      Array.prototype.forEach.call(tabs, function (x) { x.classList.toggle("active", x === b); });
      Array.prototype.forEach.call(document.querySelectorAll("section.model"), function (s) {
        s.hidden = s.getAttribute("data-m") !== m;
      });
    });
  });
  // confusion-matrix cells list their images
  function figure(k, t, p, conf) {
    var f = el("figure", "th " + (t === p ? "ok" : "bad"));
    var name = D.images[k] || "";
    f.title = name;
    var u = D.thumbs[k];
    if (u) { var im = el("img"); im.alt = name; im.addEventListener("load", pixelate); im.src = u; f.appendChild(im); }
    else f.appendChild(el("div", "noimg", "no preview"));
    var c = el("figcaption");
    c.appendChild(el("span", "tl", t));
    c.appendChild(el("span", "arrow", "\u2192"));
    c.appendChild(el("span", "pl", p));
    c.appendChild(el("span", "cf", conf.toFixed(2)));
    f.appendChild(c);
    return f;
  }
  var pinned = {};
  function show(td) {
    var m = td.getAttribute("data-m"), i = +td.getAttribute("data-i"), j = +td.getAttribute("data-j");
    var M = D.models[m], cell = M.cells[i + "," + j];
    var panel = document.getElementById("cm-panel-" + m);
    panel.textContent = "";
    var t = M.labels[i], p = M.labels[j];
    var h = el("h4");
    h.appendChild(el("span", "", "true "));
    h.appendChild(el("b", "", t));
    h.appendChild(el("span", "", " \u2192 predicted "));
    h.appendChild(el("b", "", p));
    var n = cell ? cell[0] : 0, items = cell ? cell[1] : [];
    h.appendChild(el("span", "sub", " \u00b7 " + n + " image" + (n === 1 ? "" : "s") +
      (items.length < n ? ", " + items.length + " most confident shown" : "")));
    panel.appendChild(h);
    var figs = el("div", "figs");
    items.forEach(function (it) { figs.appendChild(figure(String(it[0]), t, p, it[1])); });
    panel.appendChild(figs);
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.cm td.c"), function (td) {
    var m = td.getAttribute("data-m");
    td.addEventListener("mouseenter", function () { if (!pinned[m]) show(td); });
    td.addEventListener("focus", function () { if (!pinned[m]) show(td); });
    td.addEventListener("click", function () {
      if (pinned[m]) pinned[m].classList.remove("sel");
      pinned[m] = td;
      td.classList.add("sel");
      show(td);
      var panel = document.getElementById("cm-panel-" + m), r = panel.getBoundingClientRect();
      if (r.top > window.innerHeight || r.bottom < 0) panel.scrollIntoView({block: "nearest"});
    });
  });
  // sortable tables: numbers by data-v, text in natural order; ties keep the original order
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (tb) {
    var heads = tb.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, col) {
      th.addEventListener("click", function () {
        var asc = th.getAttribute("aria-sort") !== "ascending";
        Array.prototype.forEach.call(heads, function (x) { x.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", asc ? "ascending" : "descending");
        var num = th.getAttribute("data-type") === "num";
        var body = tb.tBodies[0], rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = a.cells[col], y = b.cells[col], r;
          if (num) r = parseFloat(x.getAttribute("data-v")) - parseFloat(y.getAttribute("data-v"));
          else r = x.textContent.localeCompare(y.textContent, undefined, {numeric: true});
          if (!asc) r = -r;
          return r || (+a.getAttribute("data-i") - +b.getAttribute("data-i"));
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
})();
"""
