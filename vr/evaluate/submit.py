"""`vr submit`: the leaderboard CSV (NYCU VRDL HW1 format), and `--check` of an existing one.

Format: header ``image_name,pred_label``; ``image_name`` is the file name without its extension;
``pred_label`` is the class *folder name* (never the class index: with classes 0..99 the index
order and the name order differ); one row per image, in natural order of the names.

Refusals, each naming the files: an empty or missing folder, two files with the same stem, and
unreadable images (a submission needs a row for every image, so the run stops instead of
skipping one).
"""

from __future__ import annotations

import csv
import io
import os
import zipfile
from pathlib import Path

from vr.data.folders import list_images

from vr.data.classes import ClassMap, natural_key
from vr.data.facts import unreadable
from vr.errors import VrError
from vr.evaluate.config import SubmitConfig
from vr.util.console import info
from vr.util.paths import check_outputs, check_owned_file, config_inputs, display, is_utf8, model_inputs, term

HEADER = ("image_name", "pred_label")
ZIP_MEMBER = "prediction.csv"


def _cut(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 4] + " ..."


def _names(items, limit: int = 10, width: int = 80) -> str:
    """Up to ``limit`` items, each shown in at most ``width`` characters (they can come from a CSV)."""
    items = list(items)
    shown = ", ".join(_cut(display(i), width) for i in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def list_test_images(test_dir: str | Path, verify: bool = True) -> list[Path]:
    """Images directly in ``test_dir``, sorted naturally by stem; refuses empty folders, clashing
    stems and (with ``verify``) unreadable files, naming each."""
    root = Path(test_dir)
    if root.exists() and not root.is_dir():
        raise VrError(f"the test folder {display(root)} is a file; give the folder that holds the test images")
    if not root.is_dir():
        raise VrError(f"test folder not found: {display(root)}")
    paths = list_images(root)
    if not paths:
        subdirs = [d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
        hint = f" (it has sub-folders {_names(subdirs, 3)}: pass the folder that holds the images)" if subdirs else ""
        raise VrError(f"test folder {display(root)} holds no images{hint}")
    by_stem: dict[str, list[str]] = {}
    for p in paths:
        by_stem.setdefault(p.stem, []).append(p.name)
    not_text = [p for p in paths if not is_utf8(p.stem)]
    if not_text:
        raise VrError(f"{len(not_text)} test image name(s) are not valid UTF-8, and the submission CSV (UTF-8 text) "
                      f"cannot hold them: {_names((display(p) for p in not_text), 10, 1000)}; rename them")
    clashes = [files for files in by_stem.values() if len(files) > 1]
    if clashes:
        raise VrError("test files share a name without extension, so image_name would be ambiguous: "
                      + "; ".join(" and ".join(f) for f in clashes[:5])
                      + (f" (and {len(clashes) - 5} more)" if len(clashes) > 5 else ""))
    if verify:
        reasons = list(unreadable(paths).values())
        if reasons:
            raise VrError(f"{len(reasons)} unreadable test image(s), and a submission needs a row for every image "
                          f"(fix or remove them): {_names(reasons, 5, 1000)}")
    return sorted(paths, key=lambda p: natural_key(p.stem))


def check_output_file(path: Path) -> Path:
    """Fail early, in one line, when ``path`` cannot be written."""
    from vr.util.io import write_error

    path = Path(path)
    try:
        is_dir = path.is_dir()
    except OSError as e:  # a name over the file system's limit
        raise VrError(write_error(path, e)) from e
    if is_dir:
        raise VrError(f"cannot write {display(path)}: it is a folder (give a file name, e.g. "
                      f"{display(path / 'prediction.csv')})")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VrError(f"cannot write {display(path)}: cannot create folder {display(parent)} ({e.strerror or e})") from e
    if not os.access(parent, os.W_OK):
        raise VrError(f"cannot write {display(path)}: folder {display(parent)} is not writable")
    return path


def check_submit_paths(cfg: SubmitConfig, members) -> tuple[Path, Path | None]:
    """The CSV (and zip) to write: never a model, the --config file or anything in the test
    folder, never a file of a training run or report; checked before anything is created."""
    out = Path(cfg.out)
    zip_path = out.with_suffix(".zip") if cfg.zip else None
    outputs = [("--out", out)] + ([("the zip of --out", zip_path)] if zip_path is not None else [])
    check_outputs(outputs, model_inputs(m.path for m in members) + config_inputs(cfg),
                  [("the test folder", cfg.test_dir)])
    for what, path in outputs:
        check_owned_file(path, "submit", what)
    check_output_file(out)
    return out, zip_path


def check_labels(classes: ClassMap, model: Path) -> None:
    """Every class name must be UTF-8 text to be a label in the CSV: refused before predicting."""
    bad = [c for c in classes.names if not is_utf8(c)]
    if bad:
        raise VrError(f"{display(model)} has class name(s) that are not valid UTF-8 (folder names it was trained on), "
                      f"which the submission CSV (UTF-8 text) cannot hold: {_names(display(c) for c in bad)}")


def submission_text(stems: list[str], labels: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(HEADER)
    w.writerows(zip(stems, labels))
    return buf.getvalue()


def write_submission(out: Path, stems: list[str], labels: list[str], zip_too: bool = False) -> Path | None:
    """The CSV and, with ``zip_too``, the zip holding it, committed together (vr.util.io.atomic_group):
    either both are the new ones or both the previous ones. The CSV is renamed first, so even a
    kill -9 between the two renames (undone by the next write into that folder) never leaves the
    zip, the file that is uploaded, newer than the CSV."""
    from vr.util.io import atomic_group

    data = submission_text(stems, labels).encode("utf-8")  # names and labels were checked to be UTF-8
    zip_path = out.with_suffix(".zip") if zip_too else None
    with atomic_group() as group:
        group.path(out).write_bytes(data)
        if zip_path is not None:
            with zipfile.ZipFile(group.path(zip_path), "w", compression=zipfile.ZIP_DEFLATED) as zf:
                zf.writestr(ZIP_MEMBER, data)
    return zip_path


def check_submission(csv_path: Path, test_dir: Path, classes: ClassMap) -> int:
    """Validate an existing submission; returns its row count or raises VrError listing the problems."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise VrError(f"CSV to check not found: {display(csv_path)}")
    stems = [p.stem for p in list_test_images(test_dir, verify=False)]
    try:
        rows = list(csv.reader(io.StringIO(csv_path.read_text(encoding="utf-8-sig"))))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise VrError(f"cannot read {display(csv_path)}: {_cut(str(e), 200)}") from e
    problems = []
    if not rows or tuple(c.strip() for c in rows[0]) != HEADER:
        found = _cut(display(",".join(rows[0]))) if rows else "(empty file)"
        problems.append(f"header is {found}, expected {','.join(HEADER)}")
        body = rows[1:] if rows else []
    else:
        body = rows[1:]
    bad_width = [i + 2 for i, r in enumerate(body) if len(r) != 2]
    if bad_width:
        problems.append(f"rows without exactly 2 columns at lines {_names(bad_width, 5)}")
    body = [r for r in body if len(r) == 2]
    seen: dict[str, int] = {}
    for name, _ in body:
        seen[name] = seen.get(name, 0) + 1
    dup = [n for n, c in seen.items() if c > 1]
    missing = [s for s in stems if s not in seen]
    known = set(stems)
    extra = [n for n in seen if n not in known]
    vocab = set(classes.names)
    unknown = sorted({label for _, label in body if label not in vocab}, key=natural_key)
    if dup:
        problems.append(f"{len(dup)} image(s) listed more than once: {_names(dup, 5)}")
    if missing:
        problems.append(f"{len(missing)} test image(s) missing: {_names(missing, 5)}")
    if extra:
        problems.append(f"{len(extra)} name(s) not in {display(test_dir)}: {_names(extra, 5)}")
    if unknown:
        problems.append(f"{len(unknown)} label(s) not among the model's classes: {_names(unknown, 5)}")
    if problems:
        raise VrError(f"{display(csv_path)} is not a valid submission: " + "; ".join(problems))
    return len(body)


def _print_votes(predictor, run) -> None:
    """An ensemble's members: how often each differs from the vote, and their pairwise agreement."""
    from vr.evaluate.metrics import ensemble_members
    from vr.util.console import warn

    votes = ensemble_members(run.member_probs, [str(m.path) for m in predictor.members], predictor.weights, run.probs)
    n = run.probs.shape[0]
    for m in votes["members"]:
        info(f"member {term(m['name'])} (weight {m['weight']:.3g}): differs from the vote on {m['differs_from_vote']} "
             f"of {n} images")
    for a in votes["member_agreement"]:
        info(f"member agreement {term(a['a'])} vs {term(a['b'])}: {100 * a['top1_agreement']:.2f}% top-1 "
             f"({a['n_disagree']} images differ)")
    for note in votes["notes"]:
        warn(term(note))


def run_submit(cfg: SubmitConfig) -> Path:
    from vr.models.ensemble import class_order
    from vr.runtime.load import check_predictor_budget, load_ensemble, load_predictor, model_classes

    members = cfg.members()
    ensemble = len(members) > 1
    if cfg.check_csv is not None:
        maps = [model_classes(m.path) for m in members]
        class_order([(str(m.path), c.names) for m, c in zip(members, maps)])
        n = check_submission(cfg.check_csv, cfg.test_dir, maps[0])
        info(f"{term(cfg.check_csv)} is a valid submission: {n} rows, one per test image, labels among the model's classes")
        return Path(cfg.check_csv)

    out, _ = check_submit_paths(cfg, members)
    paths = list_test_images(cfg.test_dir)
    if ensemble:
        predictor = load_ensemble(members, device=cfg.device, tta=cfg.tta, batch_size=cfg.batch_size)
    else:
        predictor = load_predictor(members[0].path, device=cfg.device, tta=cfg.tta, batch_size=cfg.batch_size)
    check_labels(predictor.classes, predictor.path)
    total = check_predictor_budget(predictor, cfg.param_budget(), str(predictor.path))
    params = "" if total is None else f" · {total:,} parameters"
    info(f"{term(predictor.path)}: {predictor.runtime} on {predictor.provider} · TTA {predictor.tta} · "
         f"{len(predictor.classes)} classes · {len(paths)} test images{params}")

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from vr.runtime.runner import predict_files
    from vr.util.console import console

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console) as progress:
        task = progress.add_task("predict", total=len(paths))
        run = predict_files(predictor, paths, cfg.batch_size, cfg.workers, advance=lambda n: progress.advance(task, n))
    if run.member_probs is not None:
        _print_votes(predictor, run)
    labels = [predictor.classes.names[i] for i in run.probs.argmax(axis=1)]
    zip_path = write_submission(out, [p.stem for p in paths], labels, cfg.zip)
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    info(f"wrote {term(out)}: {len(labels)} rows, {len(counts)} distinct labels"
         + (f"; {term(zip_path)} holds it as {ZIP_MEMBER}" if zip_path else ""))
    return out
