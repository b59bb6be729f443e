"""`vr data check`: what a dataset holds and what to change before training on it.

The layout (train/, val/, test/ or one ImageFolder) is found here, every image's facts (header,
bytes hash, perceptual hash, readability) come from ``vr.data.facts`` (cached across runs); then
class counts, geometry, duplicates and modes are aggregated into one JSON-able report.
``vr.data.check_report`` turns the report into findings (each naming the flag or action that
fixes it) and the terminal table.

Only the standard library and vr's light modules are imported at module level: the CLI imports
this module (for :class:`DataCheckConfig`) at start-up.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from vr.config import ConfigBase, check, check_choice, option
from vr.data.check_dups import SPLIT_ORDER
from vr.data.facts import GREY, ImageFacts, default_workers, inspect_all
from vr.errors import VrError

# The crop modes of vr.models.preprocess (kept here as strings: the CLI imports this module at
# start-up); the geometry of each is in kept_share().
CHECK_CROP_MODES = ("center", "squash", "pad")
NEAR_DISTANCE = 4  # phash Hamming distance; resized/re-encoded copies score 0-2, unrelated photos ~20-32
EXAMPLES = 5  # example paths kept per layout problem / unreadable kind
_VAL_LIKE = ("valid", "validation", "dev", "eval")


@dataclass
class DataCheckConfig(ConfigBase):
    data: Path = option(help="Dataset folder: DATA/train/<class>/, DATA/val/<class>/ and optionally DATA/test/ "
                             "(flat, unlabelled), or one ImageFolder DIR/<class>/<image>, or a flat folder of "
                             "images.", argument=True)
    img_size: int = option(224, "Network input size the crop advice is computed for (the --img-size you train "
                                "with).")
    crop_pct: float = option(0.875, "Eval centre-crop fraction: images are resized to img-size/crop-pct, then "
                                    "centre-cropped (vr train's --crop-pct).")
    crop_mode: str = option("center", "The eval crop to judge: center (shorter side to the resize size, centre "
                                      "crop), squash (resize to a square, ignoring aspect), pad (letterbox: the "
                                      "longer side to the resize size on a square canvas, then the centre crop).",
                            choices=CHECK_CROP_MODES)
    near_distance: int = option(NEAR_DISTANCE, "Near-duplicates: largest Hamming distance between two 64-bit "
                                               "perceptual hashes (phash) that counts as the same picture.")
    as_json: bool = option(False, "Print the JSON report on stdout instead of the table.", flag="--json")
    out: Optional[Path] = option(None, "Also write the JSON report to this file (atomically).")
    workers: Optional[int] = option(None, "Threads that read and hash images (default: twice the CPU count, "
                                          "at most 8).")

    def __post_init__(self):
        check(8 <= self.img_size <= 4096, f"--img-size must be in [8, 4096] (got {self.img_size})")
        check(0.0 < self.crop_pct <= 1.0, f"--crop-pct must be in (0, 1] (got {self.crop_pct})")
        check_choice("--crop-mode", self.crop_mode, CHECK_CROP_MODES)
        check(0 <= self.near_distance <= 32, f"--near-distance must be in [0, 32] (got {self.near_distance})")
        check(self.workers is None or self.workers >= 1, f"--workers must be >= 1 (got {self.workers})")

    @property
    def resize_size(self) -> int:
        return resize_for(self.img_size, self.crop_pct)


def resize_for(input_size: int, crop_pct: float) -> int:
    """The resize size vr's preprocessing uses: floor(input_size / crop_pct)."""
    return int(math.floor(input_size / crop_pct))


# --- layout ----------------------------------------------------------------------------------


@dataclass
class SplitFiles:
    """The image files of one split that vr reads; ``labels[i]`` is None for a flat split."""

    name: str
    folder: Path
    labelled: bool
    classes: list[str] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    labels: list[Optional[str]] = field(default_factory=list)


@dataclass
class Layout:
    kind: str  # "splits" (train/val/test), "imagefolder" or "flat"
    splits: list[SplitFiles]
    problems: list[dict] = field(default_factory=list)


def _is_image(p: Path) -> bool:
    from vr.data.images import IMAGE_EXTENSIONS

    return p.suffix.lower() in IMAGE_EXTENSIONS


def _problem(problems: list, split: str, kind: str, paths: list[Path], root: Path, **extra) -> None:
    if paths:
        problems.append({"split": split, "kind": kind, "count": len(paths),
                         "examples": [_rel(p, root) for p in paths[:EXAMPLES]], **extra})


def _rel(p: Path, root: Path) -> str:
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return str(p)


def _files_below(folder: Path) -> list[Path]:
    """Every file under ``folder`` (any depth), for reporting what vr will not read."""
    return sorted(Path(d) / f for d, _, files in os.walk(folder) for f in files)


def _split_entries(folder: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """(visible sub-folders, visible files, hidden entries) directly inside ``folder``."""
    from vr.data.classes import natural_key

    entries = sorted(folder.iterdir(), key=lambda p: natural_key(p.name))
    hidden = [p for p in entries if p.name.startswith(".")]
    dirs = [p for p in entries if p.is_dir() and not p.name.startswith(".")]
    files = [p for p in entries if p.is_file() and not p.name.startswith(".")]
    return dirs, files, hidden


def _scan_labelled(name: str, folder: Path, root: Path, problems: list) -> SplitFiles:
    """``folder/<class>/<image>``, read the way vr.data.folders reads it; the rest is a problem."""
    split = SplitFiles(name, folder, labelled=True)
    dirs, files, hidden = _split_entries(folder)
    _problem(problems, name, "images_outside_classes", [p for p in files if _is_image(p)], root)
    _problem(problems, name, "non_image_files", [p for p in files if not _is_image(p)], root)
    nested, non_image, hidden_inner = [], [], list(hidden)
    for d in dirs:
        split.classes.append(d.name)
        sub_dirs, sub_files, sub_hidden = _split_entries(d)
        hidden_inner += sub_hidden
        for p in sub_files:
            if _is_image(p):
                split.paths.append(p)
                split.labels.append(d.name)
            else:
                non_image.append(p)
        for s in sub_dirs:
            nested += [p for p in _files_below(s) if _is_image(p)]
    _problem(problems, name, "nested_folders", nested, root)
    _problem(problems, name, "non_image_files", non_image, root)
    _problem(problems, name, "hidden_files", hidden_inner, root)
    return split


def _scan_flat(name: str, folder: Path, root: Path, problems: list) -> SplitFiles:
    """Images directly in ``folder`` (vr submit's test folder); sub-folders are a problem."""
    split = SplitFiles(name, folder, labelled=False)
    dirs, files, hidden = _split_entries(folder)
    split.paths = [p for p in files if _is_image(p)]
    split.labels = [None] * len(split.paths)
    _problem(problems, name, "non_image_files", [p for p in files if not _is_image(p)], root)
    _problem(problems, name, "hidden_files", hidden, root)
    _problem(problems, name, "subfolders", [p for d in dirs for p in _files_below(d) if _is_image(p)], root)
    by_stem: dict[str, list[Path]] = defaultdict(list)
    for p in split.paths:
        by_stem[p.stem].append(p)
    _problem(problems, name, "stem_clash", [p for ps in by_stem.values() if len(ps) > 1 for p in ps], root)
    return split


def discover(root: str | Path) -> Layout:
    """Find the splits of ``root`` and every layout problem; VrError when there is nothing to check."""
    root = Path(root)
    if not root.is_dir():
        raise VrError(f"data folder not found: {root}")
    dirs, files, _ = _split_entries(root)
    names = {d.name for d in dirs}
    problems: list[dict] = []
    if names & set(SPLIT_ORDER):
        layout = Layout("splits", [], problems)
        for name in ("train", "val"):
            if name in names:
                layout.splits.append(_scan_labelled(name, root / name, root, problems))
            else:
                problems.append({"split": name, "kind": "missing_split", "count": 1, "examples": [],
                                 "renamed": sorted(n for n in names if n.lower() in _VAL_LIKE)})
        if "test" in names:
            test = root / "test"
            t_dirs, t_files, _ = _split_entries(test)
            if t_dirs and not any(_is_image(p) for p in t_files):
                # test/<class>/<image>: labelled, which vr submit cannot read (vr eval can).
                problems.append({"split": "test", "kind": "labelled_test", "count": len(t_dirs), "examples": []})
                layout.splits.append(_scan_labelled("test", test, root, problems))
            else:
                layout.splits.append(_scan_flat("test", test, root, problems))
        _problem(problems, "", "unused_folders", [d for d in dirs if d.name not in SPLIT_ORDER], root)
        _problem(problems, "", "top_level_files", [p for p in files if _is_image(p)], root)
    elif dirs:
        layout = Layout("imagefolder", [_scan_labelled(root.name or "data", root, root, problems)], problems)
    else:
        layout = Layout("flat", [_scan_flat(root.name or "data", root, root, problems)], problems)
    if not any(s.paths for s in layout.splits):
        raise VrError(f"{root} holds no images that vr reads (expected {root}/train/<class>/<image> and "
                      f"{root}/val/<class>/<image>, or {root}/<class>/<image>)")
    return layout


# --- aggregation -----------------------------------------------------------------------------


def _median(xs) -> float:
    import statistics

    return float(statistics.median(xs)) if xs else 0.0


def kept_share(h: int, w: int, input_size: int, resize_size: int, crop_mode: str, border_crop: float = 0.0) -> float:
    """Share of the image area the eval crop keeps.

    After the border crop (``floor(side * border_crop)`` off each edge): center resizes the
    shorter side to ``resize_size`` (the longer floored, as in Preprocess), then cuts an
    ``input_size`` centre crop; squash resizes to a ``resize_size`` square, then the crop; pad
    (letterbox: the longer side to ``resize_size`` on a square canvas, then the centre crop) keeps
    all of the shorter side and ``input_size / resize_size`` of the longer one, undistorted.
    """
    if border_crop:
        bh, bw = h - 2 * int(h * border_crop), w - 2 * int(w * border_crop)
        return bh * bw / (h * w) * kept_share(bh, bw, input_size, resize_size, crop_mode)
    if crop_mode == "pad":
        r, c = resize_size, (resize_size - input_size) // 2
        sides = (int(r * h / w), r) if h <= w else (r, int(r * w / h))
        kept = 1.0
        for n in sides:  # overlap of the image (centred on the canvas) with the crop window
            off = (r - n) // 2
            kept *= max(0, min(off + n, c + input_size) - max(off, c)) / max(1, n)
        return kept
    if crop_mode == "squash":
        rh = rw = resize_size
    elif w <= h:
        rh, rw = int(resize_size * h / w), resize_size
    else:
        rh, rw = resize_size, int(resize_size * w / h)
    return min(1.0, input_size * input_size / (rh * rw))


def class_stats(labels: list[str], classes: list[str]) -> dict:
    counts = Counter(labels)
    per_class = {c: counts.get(c, 0) for c in classes}
    nonzero = [n for n in per_class.values() if n]
    return {
        "counts": per_class,
        "min": min(nonzero) if nonzero else 0,
        "median": _median(nonzero),
        "max": max(nonzero) if nonzero else 0,
        "imbalance": round(max(nonzero) / min(nonzero), 2) if nonzero else None,
        "empty": [c for c, n in per_class.items() if n == 0],
    }


def geometry_stats(facts: list[ImageFacts], input_size: int, resize_size: int, border_crop: float = 0.0) -> dict:
    """Size and aspect distribution and the share each crop mode keeps, over readable images."""
    hw = [(f.height, f.width) for f in facts if f.problem is None and f.height and f.width]
    if not hw:
        return {"images": 0}
    aspects = [w / h for h, w in hw]
    elong = [max(a, 1 / a) for a in aspects]
    short = [min(h, w) for h, w in hw]
    sizes = Counter(f"{w}x{h}" for h, w in hw)
    buckets = {"<0.5": 0, "0.5-0.8": 0, "0.8-1.25": 0, "1.25-2": 0, ">=2": 0}
    for a in aspects:
        key = "<0.5" if a < 0.5 else "0.5-0.8" if a < 0.8 else "0.8-1.25" if a < 1.25 else "1.25-2" if a < 2 else ">=2"
        buckets[key] += 1
    return {
        "images": len(hw),
        "width": {"min": min(w for _, w in hw), "median": _median([w for _, w in hw]), "max": max(w for _, w in hw)},
        "height": {"min": min(h for h, _ in hw), "median": _median([h for h, _ in hw]), "max": max(h for h, _ in hw)},
        "short_side": {"min": min(short), "median": _median(short), "max": max(short)},
        "smaller_than_input": sum(s < input_size for s in short),
        "aspect_median": round(_median(aspects), 3),  # width / height
        "elongation_median": round(_median(elong), 3),  # long / short side
        "aspect_buckets": buckets,
        "common_sizes": dict(sizes.most_common(5)),
        "kept_share_median": {m: round(_median([kept_share(h, w, input_size, resize_size, m, border_crop)
                                                for h, w in hw]), 4) for m in CHECK_CROP_MODES},
        "pad_share_median": round(_median([1 - 1 / e for e in elong]), 4),  # of the letterboxed square
    }


def _unreadable_kind(reason: str) -> str:
    if "empty file" in reason:
        return "zero_bytes"
    if "UnidentifiedImageError" in reason or "cannot identify" in reason:
        return "not_an_image"
    if "truncated" in reason.lower():
        return "truncated"
    if "too many pixels" in reason:
        return "too_large"
    return "corrupt"


def mode_stats(facts: list[ImageFacts], rels: list[str]) -> dict:
    """Counts of images vr converts on reading, and of those it cannot read (with examples)."""
    ok = [f for f in facts if f.problem is None]
    counts = {
        "greyscale": sum(f.mode in GREY for f in ok),
        "palette": sum(f.mode in ("P", "PA") for f in ok),
        "cmyk": sum(f.mode == "CMYK" for f in ok),
        "alpha": sum(f.alpha for f in ok),
        "16_bit": sum(f.high_depth for f in ok),
        "other_modes": sum(f.mode not in GREY | {"P", "PA", "CMYK", "RGB", "RGBA", "RGBa"} for f in ok),
    }
    kinds: dict[str, list[str]] = defaultdict(list)
    for f, rel in zip(facts, rels):
        if f.problem is not None:
            kinds[_unreadable_kind(f.problem)].append(rel)
    unreadable = {k: {"count": len(v), "examples": v[:EXAMPLES]} for k, v in sorted(kinds.items())}
    return {"modes": dict(Counter(f.mode for f in ok).most_common()), "counts": counts,
            "unreadable": unreadable, "unreadable_total": sum(len(v) for v in kinds.values())}


# --- the report ------------------------------------------------------------------------------


@dataclass
class Item:
    split: str
    label: Optional[str]
    rel: str
    facts: ImageFacts


def _split_report(split: SplitFiles, items: list[Item], input_size: int, resize_size: int,
                  border_crop: float) -> dict:
    ok = [it for it in items if it.facts.problem is None]
    rep = {"folder": str(split.folder), "labelled": split.labelled, "files": len(items), "images": len(ok)}
    if split.labelled:
        rep["classes"] = class_stats([it.label for it in ok], split.classes)
    rep["geometry"] = geometry_stats([it.facts for it in items], input_size, resize_size, border_crop)
    rep.update(mode_stats([it.facts for it in items], [it.rel for it in items]))
    return rep


def _class_sets(layout: Layout) -> dict:
    by = {s.name: set(s.classes) for s in layout.splits if s.labelled}
    if layout.kind != "splits" or "train" not in by:
        return {}
    out = {}
    for other in ("val", "test"):
        if other in by:
            out[f"only_in_{other}"] = sorted(by[other] - by["train"])
            out[f"missing_from_{other}"] = sorted(by["train"] - by[other])
    return out


def check_data(root: str | Path, *, input_size: int = 224, resize_size: Optional[int] = None,
               crop_mode: str = "center", border_crop: float = 0.0, near_distance: int = NEAR_DISTANCE,
               workers: Optional[int] = None, progress: bool = True) -> dict:
    """Check the dataset at ``root`` and return the JSON-able report (findings included)."""
    from vr.data.check_dups import exact_duplicates, near_duplicates
    from vr.data.check_report import build_findings

    t0 = time.perf_counter()
    resize_size = resize_size or resize_for(input_size, 0.875)
    if resize_size < input_size:
        raise VrError(f"resize size {resize_size} is smaller than the crop {input_size}")
    check_choice("--crop-mode", crop_mode, CHECK_CROP_MODES)
    check(0.0 <= border_crop < 0.5, f"border crop {border_crop} must be in [0, 0.5)")
    root = Path(root)
    layout = discover(root)
    paths = [p for s in layout.splits for p in s.paths]
    facts = inspect_all(paths, workers or default_workers(), progress)
    items, k = [], 0
    for s in layout.splits:
        for p, label in zip(s.paths, s.labels):
            items.append(Item(s.name, label, _rel(p, root), facts[k]))
            k += 1
    report = {
        "root": str(root),
        "layout": layout.kind,
        "settings": {"input_size": input_size, "resize_size": resize_size, "crop_mode": crop_mode,
                     "border_crop": border_crop, "near_distance": near_distance,
                     "hash": "blake2b-128 of the file bytes", "perceptual_hash": "imagehash.phash, 64 bits"},
        "splits": {s.name: _split_report(s, [it for it in items if it.split == s.name], input_size, resize_size,
                                         border_crop) for s in layout.splits},
        "classes": _class_sets(layout),
        "layout_problems": layout.problems,
        "duplicates": {"exact": exact_duplicates(items), "near": near_duplicates(items, near_distance)},
    }
    report["findings"] = build_findings(report)
    report["seconds"] = round(time.perf_counter() - t0, 2)
    return report


def run_data_check(data_root: str | Path, input_size: int, resize_size: int, crop_mode: str = "center",
                   out_json: str | Path | None = None, quiet: bool = False, workers: Optional[int] = None,
                   border_crop: float = 0.0) -> dict:
    """For `vr train`: check ``data_root``, print the findings (unless ``quiet``) and save the
    report atomically to ``out_json`` (e.g. RUN/data_check.json). Returns the report."""
    from vr.data.check_report import print_findings
    from vr.util.io import atomic_write_json

    report = check_data(data_root, input_size=input_size, resize_size=resize_size, crop_mode=crop_mode,
                        border_crop=border_crop, workers=workers, progress=not quiet)
    if not quiet:
        print_findings(report)
    if out_json is not None:
        atomic_write_json(out_json, report)
    return report


def run(cfg: DataCheckConfig) -> dict:
    """`vr data check`."""
    import json
    import sys

    from vr.data.check_report import print_findings
    from vr.util.io import atomic_write_json

    if cfg.out is not None:  # before minutes of hashing: never inside the data, never another command's file
        from vr.util.paths import check_outputs, check_owned_file

        check_outputs([("--out", cfg.out)], input_dirs=[("the data folder", cfg.data)])
        check_owned_file(cfg.out, "data check")
    report = check_data(cfg.data, input_size=cfg.img_size, resize_size=cfg.resize_size, crop_mode=cfg.crop_mode,
                        near_distance=cfg.near_distance, workers=cfg.workers, progress=True)
    if cfg.out is not None:
        atomic_write_json(cfg.out, report)
    if cfg.as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        print_findings(report)
        if cfg.out is not None:
            from vr.util.console import info

            info(f"wrote {cfg.out}")
    return report
