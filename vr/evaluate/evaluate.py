"""`vr eval`: score one or more models on a labelled folder and compare them in one report."""

from __future__ import annotations

import datetime as _dt
import itertools
from pathlib import Path

import vr
from vr.data.folders import scan_image_folder
from vr.data.classes import ClassMap, natural_key
from vr.errors import VrError
from vr.evaluate.config import EvalConfig
from vr.evaluate.metrics import agreement, classification_metrics, ensemble_members, metric_deltas
from vr.evaluate.predictors import Predictor, check_predictor_budget, load_predictor
from vr.evaluate.report import (model_labels, print_summary, render_markdown, write_confusion_csv,
                                write_confusion_png, write_predictions_csv)
from vr.evaluate.runner import predict_files
from vr.util.console import info, warn
from vr.util.io import atomic_write_json, atomic_write_text, check_writable_dir
from vr.util.manifest import write_manifest


def resolve_data_root(data: Path, predictors: list[Predictor]) -> Path:
    """DIR, or DIR/val when DIR holds val/ and no model has a class called 'val'."""
    data = Path(data)
    if not data.is_dir():
        raise VrError(f"data folder not found: {data}")
    val = data / "val"
    if val.is_dir() and not any("val" in p.classes.names for p in predictors):
        info(f"using {val} (the val/ split of {data})")
        return val
    return data


def class_folders(root: Path) -> list[str]:
    return sorted((d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")), key=natural_key)


def check_known_classes(root: Path, folders: list[str], predictor: Predictor) -> None:
    unknown = [f for f in folders if f not in predictor.classes.names]
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:10]) + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
        raise VrError(f"{predictor.path.name} does not know the class(es) {shown} of data folder {root} "
                      f"(its classes: {', '.join(predictor.classes.names[:10])}"
                      f"{', ...' if len(predictor.classes) > 10 else ''})")


def run_eval(cfg: EvalConfig) -> dict:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from vr.util.console import console

    out = check_writable_dir(cfg.out)
    predictors = [load_predictor(p, device=cfg.device, tta=cfg.tta, batch_size=cfg.batch_size) for p in cfg.models]
    names = model_labels(cfg.models)
    budget = cfg.param_budget()
    for name, p in zip(names, predictors):
        check_predictor_budget(p, budget, name)  # before any image is read
        info(f"{name}: {p.runtime} on {p.provider} · TTA {p.tta} · {len(p.classes)} classes")
        for note in p.notes:
            warn(f"{name}: {note}")
    if len({p.tta for p in predictors}) > 1:
        warn("the models use different TTA (" + ", ".join(f"{n}: {p.tta}" for n, p in zip(names, predictors))
             + "); their agreement includes that difference (give --tta to run checkpoints like the exports)")

    root = resolve_data_root(cfg.data, predictors)
    folders = class_folders(root)
    for p in predictors:
        check_known_classes(root, folders, p)
    scan = scan_image_folder(root, classes=ClassMap(tuple(folders)) if folders else None, what="data")
    paths = [path for path, _ in scan.samples]
    true_names = [scan.classes.names[i] for _, i in scan.samples]
    images = [path.relative_to(root).as_posix() for path in paths]

    models, all_probs = [], []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=False) as progress:
        for name, p in zip(names, predictors):
            task = progress.add_task(f"eval {name}", total=len(paths))
            run = predict_files(p, paths, cfg.batch_size, cfg.workers,
                                advance=lambda n, task=task: progress.advance(task, n))
            y_true = [p.classes.index(t) for t in true_names]
            m = classification_metrics(y_true, run.probs, p.classes, cfg.worst_k)
            files = {"predictions": f"predictions_{name}.csv", "confusion_png": f"confusion_{name}.png",
                     "confusion_csv": f"confusion_{name}.csv",
                     "confusion_normalized_csv": f"confusion_{name}_normalized.csv"}
            cm = m["confusion_matrix"]
            write_predictions_csv(out / files["predictions"], images, true_names, run.probs, p.classes.names)
            write_confusion_csv(out / files["confusion_csv"], cm["counts"], cm["labels"])
            write_confusion_csv(out / files["confusion_normalized_csv"], cm["normalized"], cm["labels"], "{:.6f}")
            write_confusion_png(out / files["confusion_png"], cm["counts"], cm["normalized"], cm["labels"], name)
            entry = {"name": name, **p.describe(), "notes": list(p.notes), **m, **run.timing(), "files": files}
            if run.member_probs is not None:  # an ensemble: how its members vote, and whether voting can help
                votes = ensemble_members(run.member_probs, [str(x.path) for x in p.members], p.weights, run.probs,
                                         y_true, p.classes)
                entry["members"] = [{**d, **v} for d, v in zip(entry["members"], votes["members"])]
                entry["member_agreement"] = votes["member_agreement"]
                entry["any_member_correct"] = votes["any_member_correct"]
                entry["notes"] += votes["notes"]
            models.append(entry)
            all_probs.append(run.probs)

    pairs = []
    for (i, a), (j, b) in itertools.combinations(enumerate(predictors), 2):
        agr = agreement(all_probs[i], a.classes, all_probs[j], b.classes, images, true_names)
        pairs.append({"a": names[i], "b": names[j], "a_path": str(a.path), "b_path": str(b.path), **agr,
                      "deltas": metric_deltas(models[i], models[j])})

    report = {
        "vr_version": vr.__version__,
        "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "data": str(root),
        "data_classes": folders,
        "n_images": len(paths),
        "skipped": scan.skipped,
        "config": cfg.to_dict(),
        "models": models,
        "agreement": pairs,
    }
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", render_markdown(report))
    manifest = write_manifest(out, cfg.to_dict(), providers={
        name: {"path": str(p.path), "runtime": p.runtime, "provider": p.provider,
               "execution_providers": list(p.execution_providers or [p.provider])}
        for name, p in zip(names, predictors)})
    written = [out / "report.md", out / "report.json"]
    if cfg.html:
        from vr.evaluate.report_html import write_html_report

        write_html_report(out / "report.html", report, paths, images, true_names, all_probs, manifest,
                          workers=max(1, cfg.workers))
        written.insert(0, out / "report.html")
    print_summary(report)
    info("report: " + " · ".join(str(w) for w in written))
    return report
