"""Report files (every one written atomically) and the terminal summary of `vr eval`."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from vr.util.io import atomic_path, atomic_write_text


def csv_text(rows: Sequence[Sequence], header: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


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
    rows = [(img, t, class_names[p], f"{c:.6f}") for img, t, p, c in zip(images, true_labels, pred, conf)]
    atomic_write_text(path, csv_text(rows, ("image", "true_label", "pred_label", "confidence")))


def write_confusion_csv(path: Path, matrix, names: Sequence[str], fmt: str = "{}") -> None:
    rows = [[names[i]] + [fmt.format(v) for v in row] for i, row in enumerate(matrix)]
    atomic_write_text(path, csv_text(rows, ["true\\pred", *names]))


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


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _num(v, fmt="{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def render_markdown(report: dict) -> str:
    L: list[str] = []
    L.append("# vr eval report\n")
    L.append(f"- data: `{report['data']}` ({report['n_images']} images, {len(report['data_classes'])} classes)")
    if report.get("skipped"):
        L.append(f"- skipped unreadable images: {len(report['skipped'])}")
    L.append(f"- vr {report['vr_version']}, {report['created']} (versions, device, command: manifest.json)")
    if report.get("config", {}).get("html"):
        L.append("- error analysis with the images (confusion cells, worst classes, flips): [report.html](report.html)")
    L.append("- macro/weighted averages over the classes present in the labels or the predictions; an undefined "
             "precision or recall counts as 0; latency is model time per batch (decoding excluded); images/s is the "
             "whole loop, decoding included.\n")
    L.append("## Models\n")
    L.append("| model | runtime | provider | TTA | top-1 | top-5 | macro F1 | weighted F1 | macro P | macro R | img/s | p50 ms | p95 ms |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for m in report["models"]:
        lat = m["latency_ms"]
        L.append(f"| {m['name']} | {m['runtime']} | {m['provider']} | {m['tta']} | {_pct(m['accuracy'])} | "
                 f"{_pct(m['top5'])} | {_pct(m['macro_f1'])} | {_pct(m['weighted_f1'])} | {_pct(m['macro_precision'])} | "
                 f"{_pct(m['macro_recall'])} | {_num(m['images_per_second'])} | {_num(lat.get('p50'), '{:.2f}')} | "
                 f"{_num(lat.get('p95'), '{:.2f}')} |")
    L.append("")
    for m in report["models"]:
        L.append(f"## {m['name']}\n")
        k_note = f" · top-5 is top-{m['top5_k']} ({m['top5_k']} classes)" if m["top5_k"] < 5 else ""
        L.append(f"`{m['path']}` · {m['runtime']} on {m['provider']} · TTA {m['tta']} · host preprocessing: "
                 f"{m['host_preprocess']}{k_note}")
        for note in m.get("notes", []):
            L.append(f"\n> note: {note}")
        L.append("")
        if m.get("members"):
            _render_members(L, m)
        files = m["files"]
        L.append(f"![confusion matrix]({files['confusion_png']})\n")
        L.append(f"Files: [{files['predictions']}]({files['predictions']}), [{files['confusion_csv']}]({files['confusion_csv']}), "
                 f"[{files['confusion_normalized_csv']}]({files['confusion_normalized_csv']})\n")
        if m["worst_classes"]:
            L.append(f"### Worst {len(m['worst_classes'])} classes\n")
            L.append("| class | F1 | precision | recall | images | most confused with |")
            L.append("|---|---|---|---|---|---|")
            for w in m["worst_classes"]:
                conf = f"{w['most_confused_with']} ({w['most_confused_count']})" if w["most_confused_with"] else "-"
                L.append(f"| {w['class']} | {_pct(w['f1'])} | {_pct(w['precision'])} | {_pct(w['recall'])} | {w['support']} | {conf} |")
            L.append("")
        L.append("### Per class\n")
        L.append("| class | precision | recall | F1 | images |")
        L.append("|---|---|---|---|---|")
        for name, d in m["per_class"].items():
            L.append(f"| {name} | {_pct(d['precision'])} | {_pct(d['recall'])} | {_pct(d['f1'])} | {d['support']} |")
        L.append("")
    if report["agreement"]:
        L.append("## Agreement\n")
        L.append("| a | b | top-1 agreement | flipped | max abs prob diff | mean abs prob diff | Δ top-1 | Δ macro F1 |")
        L.append("|---|---|---|---|---|---|---|---|")
        for a in report["agreement"]:
            d = a["deltas"]
            L.append(f"| {a['a']} | {a['b']} | {_pct(a['top1_agreement'])} | {a['n_flipped']} | "
                     f"{_num(a['max_abs_prob_diff'], '{:.3g}')} | {_num(a['mean_abs_prob_diff'], '{:.3g}')} | "
                     f"{100 * d['accuracy']:+.2f} pts | {100 * d['macro_f1']:+.2f} pts |")
        L.append("")
        for a in report["agreement"]:
            if a["flipped"]:
                L.append(f"### Flipped between {a['a']} and {a['b']} ({a['n_flipped']})\n")
                L.append(f"| image | true | {a['a']} | {a['b']} |")
                L.append("|---|---|---|---|")
                for f in a["flipped"][:50]:
                    L.append(f"| {f['image']} | {f['true_label']} | {f['a_pred']} ({f['a_confidence']:.3f}) | "
                             f"{f['b_pred']} ({f['b_confidence']:.3f}) |")
                if a["n_flipped"] > 50:
                    L.append(f"\n… and {a['n_flipped'] - 50} more (all in report.json)")
                L.append("")
    return "\n".join(L) + "\n"


def _params(n) -> str:
    return "-" if n is None else f"{n / 1e6:.2f}M"


def _render_members(L: list[str], m: dict) -> None:
    L.append(f"### Ensemble members ({len(m['members'])}, soft vote)\n")
    L.append("| member | weight | runtime | TTA | params | top-1 | macro F1 | differs from the vote |")
    L.append("|---|---|---|---|---|---|---|---|")
    for d in m["members"]:
        L.append(f"| `{d['path']}` | {d['weight']:.3g} | {d['runtime']} | {d['tta']} | {_params(d.get('param_count'))} | "
                 f"{_pct(d.get('accuracy'))} | {_pct(d.get('macro_f1'))} | {d.get('differs_from_vote', '-')} |")
    L.append(f"\nEnsemble top-1 {_pct(m['accuracy'])}; at least one member right on {_pct(m.get('any_member_correct'))} "
             f"of the images.\n")
    L.append("| member a | member b | top-1 agreement | images that differ |")
    L.append("|---|---|---|---|")
    for a in m.get("member_agreement", []):
        L.append(f"| `{a['a']}` | `{a['b']}` | {_pct(a['top1_agreement'])} | {a['n_disagree']} |")
    L.append("")


def print_summary(report: dict) -> None:
    from rich.table import Table

    from vr.util.console import console

    t = Table(title=f"vr eval · {report['n_images']} images · {report['data']}", title_justify="left")
    for col in ("model", "runtime / provider", "TTA", "top-1", "top-5", "macro F1", "img/s", "p50 ms", "p95 ms"):
        t.add_column(col, justify="left" if col in ("model", "runtime / provider", "TTA") else "right")
    for m in report["models"]:
        lat = m["latency_ms"]
        t.add_row(m["name"], f"{m['runtime']} / {m['provider']}", m["tta"], _pct(m["accuracy"]), _pct(m["top5"]),
                  _pct(m["macro_f1"]), _num(m["images_per_second"]), _num(lat.get("p50"), "{:.2f}"),
                  _num(lat.get("p95"), "{:.2f}"))
    console.print(t)
    for m in report["models"]:
        for d in m.get("members", []):
            console.print(f"{m['name']} member {d['path']} (weight {d['weight']:.3g}): top-1 {_pct(d.get('accuracy'))}, "
                          f"differs from the vote on {d.get('differs_from_vote', '-')} images")
        for a in m.get("member_agreement", []):
            console.print(f"{m['name']} members {a['a']} vs {a['b']}: top-1 agreement {_pct(a['top1_agreement'])}")
    for a in report["agreement"]:
        console.print(f"{a['a']} vs {a['b']}: top-1 agreement {_pct(a['top1_agreement'])}, {a['n_flipped']} flipped, "
                      f"max |Δp| {_num(a['max_abs_prob_diff'], '{:.3g}')}, Δ top-1 {100 * a['deltas']['accuracy']:+.2f} pts")
