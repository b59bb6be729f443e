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
from vr.runtime.base import Predictor
from vr.runtime.load import check_predictor_budget, load_predictor
from vr.evaluate.report import (model_labels, print_summary, render_markdown, write_confusion_csv,
                                write_confusion_png, write_predictions_csv)
from vr.runtime.runner import predict_files
from vr.util.console import info, warn
from vr.util.io import atomic_group, atomic_write_json, atomic_write_text, check_writable_dir
from vr.util.manifest import collect_manifest
from vr.util.phases import mark
from vr.util.paths import (OWNED, check_folder_owner, check_outputs, config_inputs, display, folder_owner, model_inputs,
                           term)

REPORT_FILES = ("report.json", "report.md", "report.html", "manifest.json")


def resolve_data_root(data: Path, predictors: list[Predictor]) -> Path:
    """DIR, or DIR/val when DIR holds val/ and no model has a class called 'val'."""
    data = Path(data)
    if data.exists() and not data.is_dir():
        raise VrError(f"--data {display(data)} is a file; give the folder of labelled images (DIR/<class>/<image>)")
    if not data.is_dir():
        raise VrError(f"data folder not found: {display(data)}")
    val = data / "val"
    if val.is_dir() and not any("val" in p.classes.names for p in predictors):
        info(f"using {term(val)} (the val/ split of {term(data)})")
        return val
    return data


def class_folders(root: Path) -> list[str]:
    return sorted((d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")), key=natural_key)


def check_known_classes(root: Path, folders: list[str], predictor: Predictor) -> None:
    unknown = [f for f in folders if f not in predictor.classes.names]
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:10]) + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
        raise VrError(f"{display(predictor.path.name)} does not know the class(es) {display(shown)} of data folder "
                      f"{display(root)} (its classes: {display(', '.join(predictor.classes.names[:10]))}"
                      f"{', ...' if len(predictor.classes) > 10 else ''})")


def check_eval_paths(cfg: EvalConfig) -> None:
    """The report folder: not a model, not inside the data, not another command's folder;
    checked before anything is created."""
    from vr.models.ensemble import expand_members

    models = [m.path for spec in cfg.models for m in expand_members([spec])]
    out = Path(cfg.out)
    outputs = [("--out", out)] + [("the report file", out / name) for name in REPORT_FILES]
    check_outputs(outputs, model_inputs(models) + config_inputs(cfg), [("the data folder", cfg.data)])
    check_folder_owner(out, "eval")


def displayable(obj):
    """A copy of ``obj`` (dicts, lists, strings) in which every string is ``display``-safe text."""
    if isinstance(obj, str):
        return display(obj)
    if isinstance(obj, dict):
        return {displayable(k): displayable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(displayable(v) for v in obj)
    return obj


def previous_files(out: Path) -> set[str]:
    """The files of the report already in ``out`` (its report.json lists its per-model files);
    only names vr eval writes, directly in ``out``, and only in a folder vr eval wrote."""
    import fnmatch
    import json

    if (folder_owner(out) or ("",))[0] != "eval":
        return set()  # files of that name are someone else's: left alone
    names = {n for n in REPORT_FILES if (out / n).is_file()}
    try:
        old = json.loads((out / "report.json").read_text(encoding="utf-8"))
        listed = [f for m in old.get("models", []) for f in (m.get("files") or {}).values()]
    except (OSError, ValueError, AttributeError, TypeError):
        listed = []
    for f in listed:
        if isinstance(f, str) and "/" not in f and any(fnmatch.fnmatch(f, pat) for pat in OWNED["eval"]):
            names.add(f)
    return names


def write_model_files(group, out: Path, name: str, images, true_names, probs, classes, m: dict) -> dict:
    """predictions_<model>.csv and the confusion matrix files, staged in the report's group."""
    files = {"predictions": f"predictions_{name}.csv", "confusion_png": f"confusion_{name}.png",
             "confusion_csv": f"confusion_{name}.csv", "confusion_normalized_csv": f"confusion_{name}_normalized.csv"}
    cm = m["confusion_matrix"]
    write_predictions_csv(group.path(out / files["predictions"]), images, true_names, probs, classes.names)
    write_confusion_csv(group.path(out / files["confusion_csv"]), cm["counts"], cm["labels"])
    write_confusion_csv(group.path(out / files["confusion_normalized_csv"]), cm["normalized"], cm["labels"], "{:.6f}")
    # matplotlib's fonts take text only: a class folder name that is not UTF-8 is drawn as caf\xe9
    write_confusion_png(group.path(out / files["confusion_png"]), cm["counts"], cm["normalized"],
                        [display(c) for c in cm["labels"]], name)
    return files


def score_models(cfg: EvalConfig, group, out: Path, names, predictors, paths, images, true_names, chosen=None):
    """Every model over the images: its entry of the report (its files staged in ``group``) and
    its probabilities. ``chosen``: --tta auto's {name: (scores, run)} (that run is reused)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from vr.util.console import console

    models, all_probs = [], []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=False) as progress:
        for name, p in zip(names, predictors):
            task = progress.add_task(f"eval {term(name)}", total=len(paths))
            if chosen and name in chosen:
                run = chosen[name][1]
                progress.advance(task, len(paths))
            else:
                run = predict_files(p, paths, cfg.batch_size, cfg.workers,
                                    advance=lambda n, task=task: progress.advance(task, n))
            y_true = [p.classes.index(t) for t in true_names]
            m = classification_metrics(y_true, run.probs, p.classes, cfg.worst_k)
            mark("metrics")
            files = write_model_files(group, out, name, images, true_names, run.probs, p.classes, m)
            mark("predictions csv + confusion png/csv")
            entry = {"name": name, **p.describe(), "notes": list(p.notes), **m, **run.timing(), "files": files}
            if chosen is not None:  # --tta auto: the table the mode was chosen from
                from vr.evaluate.tta_auto import graph_scores

                entry["tta_scores"] = chosen[name][0] if name in chosen else graph_scores(p)
            if run.member_probs is not None:  # an ensemble: how its members vote, and whether voting can help
                votes = ensemble_members(run.member_probs, [str(x.path) for x in p.members], p.weights, run.probs,
                                         y_true, p.classes)
                entry["members"] = [{**d, **v} for d, v in zip(entry["members"], votes["members"])]
                entry["member_agreement"] = votes["member_agreement"]
                entry["any_member_correct"] = votes["any_member_correct"]
                entry["notes"] += votes["notes"]
            models.append(entry)
            all_probs.append(run.probs)
    return models, all_probs


def run_eval(cfg: EvalConfig) -> dict:
    """Score the models and write the report. Every file of the report is committed as one unit
    (vr.util.io.atomic_group): a failure anywhere (a model that cannot be read, NaN outputs, a
    full disk, Ctrl-C) leaves the previous report whole, with no new file beside it; files of the
    previous report that the new one does not have are removed with the commit."""
    check_eval_paths(cfg)
    out = check_writable_dir(cfg.out)
    auto = cfg.tta == "auto"  # every mode of each checkpoint scored below, the best kept
    predictors = [load_predictor(p, device=cfg.device, tta=None if auto else cfg.tta, batch_size=cfg.batch_size)
                  for p in cfg.models]
    mark("model load")
    names = model_labels(cfg.models)
    budget = cfg.param_budget()
    for name, p in zip(names, predictors):
        check_predictor_budget(p, budget, name)  # before any image is read
        info(f"{term(name)}: {p.runtime} on {p.provider} · TTA {p.tta} · {len(p.classes)} classes")
        for note in p.notes:
            warn(f"{term(name)}: {term(note)}")
    if len({p.tta for p in predictors}) > 1:
        warn("the models use different TTA (" + ", ".join(f"{term(n)}: {p.tta}" for n, p in zip(names, predictors))
             + "); their agreement includes that difference (give --tta to run checkpoints like the exports)")

    root = resolve_data_root(cfg.data, predictors)
    folders = class_folders(root)
    for p in predictors:
        check_known_classes(root, folders, p)
    scan = scan_image_folder(root, classes=ClassMap(tuple(folders)) if folders else None, what="data")
    paths = [path for path, _ in scan.samples]
    true_names = [scan.classes.names[i] for _, i in scan.samples]
    images = [path.relative_to(root).as_posix() for path in paths]
    mark("data scan")

    chosen = None
    if auto:
        from vr.evaluate.tta_auto import auto_tta

        chosen = auto_tta(predictors, names, paths, true_names, cfg.batch_size, cfg.workers)
    before = previous_files(out)
    with atomic_group() as group:
        models, all_probs = score_models(cfg, group, out, names, predictors, paths, images, true_names, chosen)
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
        written = [out / "report.md", out / "report.json"]
        shown = displayable(report)  # names that are not UTF-8 as \xNN; report.json keeps them exactly
        atomic_write_text(group.path(out / "report.md"), render_markdown(shown))
        mark("report.md")
        manifest = collect_manifest(cfg.to_dict(), providers={
            name: {"path": str(p.path), "runtime": p.runtime, "provider": p.provider,
                   "execution_providers": list(p.execution_providers or [p.provider])}
            for name, p in zip(names, predictors)})
        if cfg.html:
            from vr.evaluate.report_html import write_html_report

            write_html_report(group.path(out / "report.html"), shown, paths, displayable(images),
                              displayable(true_names), all_probs, displayable(manifest), workers=max(1, cfg.workers))
            written.insert(0, out / "report.html")
            mark("report.html")
        atomic_write_json(group.path(out / "manifest.json"), manifest)
        atomic_write_json(group.path(out / "report.json"), report)  # renamed last: the report's index
        now = {Path(e["target"]).name for e in group.entries}
        for stale in sorted(before - now):
            group.remove(out / stale)
    mark("manifest + report.json + commit")
    print_summary(report)
    info("report: " + " · ".join(term(w) for w in written))
    mark("summary")
    return report
