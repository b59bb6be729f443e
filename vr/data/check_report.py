"""Findings of `vr data check` (each one that calls for a change names the flag or action that
makes it) and the terminal table. Reads only the report dict built by ``vr.data.check``."""

from __future__ import annotations

IMBALANCE_ADVICE = 5.0  # max/min images per train class from which --balance is suggested
ELONGATION_ADVICE = 1.5  # median long/short side from which the centre crop loses too much
FEW_IMAGES = 5  # train classes with fewer images than this are named
LEVELS = ("error", "warn", "info")


def _f(level: str, topic: str, message: str, split: str | None = None, action: str | None = None) -> dict:
    return {"level": level, "topic": topic, "split": split, "message": message, "action": action}


def _names(xs, n: int = 5) -> str:
    xs = list(xs)
    more = f" and {len(xs) - n} more" if len(xs) > n else ""
    return ", ".join(str(x) for x in xs[:n]) + more


def _n(n: int, noun: str, plural: str | None = None) -> str:
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def _v(n: int, many: str, one: str) -> str:
    return one if n == 1 else many


def _eg(examples) -> str:
    return f" (e.g. {_names(examples, 3)})" if examples else ""


def _layout_findings(report: dict) -> list[dict]:
    out = []
    for p in report["layout_problems"]:
        s, n, kind, eg = p["split"], p["count"], p["kind"], _eg(p["examples"])
        images, are = _n(n, "image"), _v(n, "are", "is")
        if kind == "missing_split":
            renamed = p.get("renamed") or []
            act = f"rename {renamed[0]}/ to {s}/" if renamed else (
                "create val/<class>/ folders (about 15% of each class's images)" if s == "val" else
                f"put the training images in {s}/<class>/")
            out.append(_f("error", "layout", f"no {s}/ folder: vr train reads DATA/train/<class>/ and "
                                             f"DATA/val/<class>/; {act}", s, act))
        elif kind == "images_outside_classes":
            act = f"move them into {s}/<class>/ folders"
            out.append(_f("warn", "layout", f"{images} directly in {s}/ {are} not read{eg}: {act}", s, act))
        elif kind == "nested_folders":
            act = "move them up into their class folder"
            out.append(_f("warn", "layout", f"{images} in sub-folders of {s}/<class>/ {are} not read{eg}: {act}",
                          s, act))
        elif kind == "subfolders":
            act = f"move them up into {s}/"
            out.append(_f("warn", "layout", f"{images} in sub-folders of {s}/ {are} not read by vr submit (it "
                                            f"reads {s}/<image> only){eg}: {act}", s, act))
        elif kind == "labelled_test":
            out.append(_f("info", "layout", f"{s}/ holds {_n(n, 'class folder')}: vr submit reads only images "
                                            f"directly in {s}/; score a labelled {s}/ with vr eval MODEL --data "
                                            f"DATA/{s}", s))
        elif kind == "stem_clash":
            act = "rename one of each pair"
            out.append(_f("error", "layout", f"{_n(n, 'file')} in {s}/ share a file stem{eg}: vr submit names rows "
                                             f"by stem and refuses them; {act}", s, act))
        elif kind == "non_image_files":
            out.append(_f("info", "layout", f"{_n(n, 'file')} in {s}/ without an image extension {are} "
                                            f"ignored{eg}", s))
        elif kind == "hidden_files":
            out.append(_f("info", "layout", f"{_n(n, 'hidden file or folder', 'hidden files or folders')} in {s}/ "
                                            f"{are} ignored{eg}", s))
        elif kind == "unused_folders":
            out.append(_f("info", "layout", f"{_n(n, 'folder')} beside train/, val/, test/ {are} not read{eg}"))
        elif kind == "top_level_files":
            act = "move them into train/<class>/ or val/<class>/"
            out.append(_f("warn", "layout", f"{images} directly in DATA/ {are} not read{eg}: {act}", None, act))
    return out


def _class_findings(report: dict) -> list[dict]:
    out, sets = [], report["classes"]
    for other in ("val", "test"):
        only, missing = sets.get(f"only_in_{other}"), sets.get(f"missing_from_{other}")
        if only:
            act = f"add train/<class>/ images for them or remove those {other}/ folders"
            level = "error" if other == "val" else "warn"
            why = "vr train refuses this" if other == "val" else "the model cannot predict them"
            out.append(_f(level, "classes", f"{_n(len(only), 'class', 'classes')} in {other}/ "
                                            f"{_v(len(only), 'are', 'is')} not in train/ ({_names(only)}): "
                                            f"{why}; {act}", other, act))
        if missing and other == "val":
            act = "move some of their train images into val/<class>/"
            out.append(_f("warn", "classes", f"{_n(len(missing), 'train class', 'train classes')} "
                                             f"{_v(len(missing), 'have', 'has')} no images in val/ "
                                             f"({_names(missing)}): their accuracy is never measured; {act}",
                          other, act))
    for name, s in report["splits"].items():
        c = s.get("classes")
        if not c:
            continue
        if c["empty"]:
            if name == "train" or report["layout"] != "splits":
                act = "add images or delete the folders"
                out.append(_f("warn", "classes", f"{_n(len(c['empty']), 'class folder')} in {name}/ "
                                                 f"{_v(len(c['empty']), 'have', 'has')} no readable "
                                                 f"images ({_names(c['empty'])}): the model gets outputs that "
                                                 f"never train; {act}", name, act))
            else:
                out.append(_f("info", "classes", f"{_n(len(c['empty']), 'class folder')} in {name}/ "
                                                 f"{_v(len(c['empty']), 'have', 'has')} no readable "
                                                 f"images ({_names(c['empty'])}): not scored", name))
        out += _balance_findings(name, c, report["layout"])
    return out


def _balance_findings(name: str, c: dict, layout: str) -> list[dict]:
    if c["imbalance"] is None:
        return []
    spread = f"{c['min']} to {c['max']} images per class, median {c['median']:g}"
    trains = name == "train" or layout != "splits"
    out = []
    if trains and c["imbalance"] >= IMBALANCE_ADVICE:
        act = "--balance sampler or --balance weights"
        out.append(_f("warn", "balance", f"{name}/ imbalance {c['imbalance']:g}x ({spread}): consider {act}",
                      name, act))
    elif trains:
        out.append(_f("info", "balance", f"{name}/ imbalance {c['imbalance']:g}x ({spread}): fine", name))
    elif c["imbalance"] >= IMBALANCE_ADVICE:
        out.append(_f("info", "balance", f"{name}/ imbalance {c['imbalance']:g}x ({spread}): accuracy is dominated "
                                         f"by the big classes; vr eval's macro F1 weighs every class equally", name))
    few = {k: n for k, n in c["counts"].items() if 0 < n < FEW_IMAGES}
    if trains and few:
        act = "add images to them"
        out.append(_f("warn", "balance", f"{_n(len(few), f'{name}/ class', f'{name}/ classes')} "
                                         f"{_v(len(few), 'have', 'has')} fewer than {FEW_IMAGES} images "
                                         f"({_names(f'{k}: {n}' for k, n in few.items())}): {act}", name, act))
    return out


def _base_split(report: dict) -> str:
    splits = report["splits"]
    return "train" if "train" in splits else next(iter(splits))


def _geometry_findings(report: dict) -> list[dict]:
    st = report["settings"]
    size, resize, mode = st["input_size"], st["resize_size"], st["crop_mode"]
    base = _base_split(report)
    g = report["splits"][base]["geometry"]
    if not g.get("images"):
        return []
    out = []
    aspect, elong, kept = g["aspect_median"], g["elongation_median"], g["kept_share_median"][mode]
    at = f"at --img-size {size} (resize {resize})"
    if mode == "center" and elong >= ELONGATION_ADVICE:
        act = "--crop-mode squash or --crop-mode pad"
        out.append(_f("warn", "crop", f"median aspect {aspect:.2f} (width/height) in {base}/: the centre crop keeps "
                                      f"{kept:.0%} of each image {at}; use {act}", base, act))
    elif mode == "center":
        out.append(_f("info", "crop", f"median aspect {aspect:.2f} (width/height) in {base}/: the centre crop keeps "
                                      f"{kept:.0%} of each image {at}: fine", base))
    elif mode == "squash":
        tail = "; --crop-mode pad keeps the aspect" if elong >= ELONGATION_ADVICE else ""
        out.append(_f("info", "crop", f"median aspect {aspect:.2f} in {base}/: squash keeps {kept:.0%} of each image "
                                      f"{at} and stretches it {elong:.2f}x{tail}", base))
    else:
        out.append(_f("info", "crop", f"median aspect {aspect:.2f} in {base}/: pad keeps {kept:.0%} of each image "
                                      f"{at}, undistorted; {g['pad_share_median']:.0%} of the square is padding", base))
    b, n = g["aspect_buckets"], g["images"]
    portrait, landscape = (b["<0.5"] + b["0.5-0.8"]) / n, (b["1.25-2"] + b[">=2"]) / n
    if portrait >= 0.2 and landscape >= 0.2:
        out.append(_f("info", "crop", f"{base}/ mixes portrait ({portrait:.0%}) and landscape ({landscape:.0%}) "
                                      f"images: --crop-mode pad keeps both undistorted", base))
    small = g["smaller_than_input"] / n
    if small >= 0.5:
        suggest = max(32, int(round(g["short_side"]["median"] / 32)) * 32)
        out.append(_f("info", "size", f"{small:.0%} of {base}/ images are smaller than --img-size {size} on their "
                                      f"shorter side (median {g['short_side']['median']:g}px): they are upscaled; "
                                      f"pretrained models often still score best at their own size, and "
                                      f"--img-size {suggest} trains much faster", base, f"--img-size {suggest}"))
    return out + _shift_findings(report, base, g)


def _shift_findings(report: dict, base: str, g: dict) -> list[dict]:
    out = []
    for name, s in report["splits"].items():
        h = s["geometry"]
        if name == base or not h.get("images"):
            continue
        ratio = h["elongation_median"] / g["elongation_median"]
        scale = h["short_side"]["median"] / max(g["short_side"]["median"], 1)
        if not (0.8 <= ratio <= 1.25) or not (0.5 <= scale <= 2):
            out.append(_f("info", "shift", f"{name}/ images (median {h['width']['median']:g}x"
                                           f"{h['height']['median']:g}, aspect {h['aspect_median']:.2f}) differ "
                                           f"in shape from {base}/ ({g['width']['median']:g}x"
                                           f"{g['height']['median']:g}, aspect {g['aspect_median']:.2f}): check "
                                           f"that the crop mode suits both", name))
    return out


def _dup_findings(report: dict) -> list[dict]:
    out = []
    exact, near = report["duplicates"]["exact"], report["duplicates"]["near"]
    for key, n in exact["cross_split"].items():
        later, earlier = key.split("/")
        if later == "val":
            act = "remove them from one split"
            out.append(_f("warn", "leakage", f"{_n(n, 'image')} of val/ also in train/ (exact copies): they "
                                             f"inflate val accuracy; {act}", later, act))
        else:
            out.append(_f("info", "leakage", f"{_n(n, 'image')} of {later}/ also in {earlier}/ (exact copies): "
                                             f"their {earlier} labels are their answers", later))
    for s, n in exact["label_conflicts"].items():
        act = "keep one copy, in the right class"
        eg = [" = ".join(d["files"][:2]) for d in exact["listed"] if d["kind"] == "label_conflict"]
        out.append(_f("warn", "duplicates", f"{_n(n, 'image')} of {s}/ {_v(n, 'sit', 'sits')} in two classes at "
                                            f"once (exact copies{', e.g. ' + eg[0] if eg else ''}): a label "
                                            f"conflict; {act}", s, act))
    for s, n in exact["same_class_copies"].items():
        act = "delete the extra copies"
        where = f"the same class of {s}/" if report["splits"][s]["labelled"] else f"{s}/"
        out.append(_f("warn", "duplicates", f"{_n(n, 'extra copy', 'extra copies')} of images in {where} (exact), "
                                            f"counted twice in training and scoring; {act}", s, act))
    return out + _near_findings(near)


def _near_findings(near: dict) -> list[dict]:
    out, d = [], near["max_distance"]
    for key, n in near["cross_split"].items():
        later, earlier = key.split("/")
        eg = [" ~ ".join(e["files"]) for e in near["listed"] if e["splits"] == [later, earlier]]
        eg_text = f"; e.g. {eg[0]}" if eg else ""
        has = f"{_n(n, 'image')} of {later}/ {_v(n, 'have', 'has')} a near-duplicate in {earlier}/"
        if later == "val":
            act = "look at them and remove true copies from one split"
            out.append(_f("warn", "leakage", f"{has} (phash distance <= {d}, not exact copies{eg_text}): {act}",
                          later, act))
        else:
            out.append(_f("info", "leakage", f"{has} (phash distance <= {d}{eg_text})", later))
    for s, n in near["within_split"].items():
        out.append(_f("info", "duplicates", f"{_n(n, 'image')} of {s}/ {_v(n, 'have', 'has')} a near-duplicate "
                                            f"in {s}/ (phash distance <= {d}): resized or re-encoded copies count "
                                            f"twice", s))
    if near["truncated"]:
        out.append(_f("info", "duplicates", f"the near-duplicate search stopped at {near['pairs']} pairs: the set "
                                            f"holds many near-identical images"))
    return out


_MODE_TEXT = {  # (noun, what vr does with it)
    "greyscale": ("greyscale image", "fine, read as RGB"),
    "palette": ("palette image", "fine, converted to RGB"),
    "cmyk": ("CMYK image", "converted to RGB without a colour profile, so colours can shift; convert to RGB once "
                           "if they look wrong"),
    "alpha": ("image with transparency", "composited on white when read; fine unless the background carries "
                                         "meaning"),
    "16_bit": ("16-bit image", "scaled to 8 bits over the full range when read"),
    "other_modes": ("image in another mode (YCbCr, LAB, HSV)", "converted to RGB by PIL"),
}


def _mode_findings(report: dict) -> list[dict]:
    out = []
    splits = report["splits"]
    for kind, (noun, text) in _MODE_TEXT.items():
        per = {n: s["counts"][kind] for n, s in splits.items() if s["counts"][kind]}
        if per:
            where = f" ({', '.join(f'{n} {c}' for n, c in per.items())})" if len(splits) > 1 else ""
            total = sum(per.values())
            plural = noun.replace("image", "images", 1)
            out.append(_f("info", "modes", f"{_n(total, noun, plural)}{where}: {text}"))
    for name, s in splits.items():
        if not s["unreadable_total"]:
            continue
        kinds = ", ".join(f"{v['count']} {k.replace('_', ' ')}" for k, v in s["unreadable"].items())
        eg = _eg([e for v in s["unreadable"].values() for e in v["examples"]])
        act = "replace or delete them"
        if name == "test" and not s["labelled"]:
            out.append(_f("error", "unreadable", f"{_n(s['unreadable_total'], 'unreadable image')} in {name}/ ({kinds})"
                                                 f"{eg}: vr submit refuses them (a submission needs a row for every "
                                                 f"image); {act}", name, act))
        else:
            out.append(_f("warn", "unreadable", f"{_n(s['unreadable_total'], 'unreadable image')} in {name}/ ({kinds})"
                                                f"{eg}: vr skips them with a warning; {act}", name, act))
    return out


def build_findings(report: dict) -> list[dict]:
    """Every finding, errors first; one 'nothing to change' line when there is no error or warning."""
    found = (_layout_findings(report) + _class_findings(report) + _geometry_findings(report)
             + _dup_findings(report) + _mode_findings(report))
    found.sort(key=lambda f: LEVELS.index(f["level"]))  # stable: topics keep their order
    if not any(f["level"] in ("error", "warn") for f in found):
        found.append(_f("info", "summary", "nothing to change"))
    return found


# --- terminal --------------------------------------------------------------------------------

_STYLE = {"error": "[bold red]error[/bold red]", "warn": "[yellow]warn[/yellow] ", "info": "[dim]info[/dim] "}


def _summary_table(report: dict):
    from rich.table import Table

    mode = report["settings"]["crop_mode"]
    t = Table(title=f"vr data check {report['root']}", title_justify="left")
    for col in ("split", "images", "classes", "per class min/med/max", "imbalance", "median size", "aspect",
                f"{mode} keeps", "unreadable"):
        t.add_column(col, justify="left" if col == "split" else "right")
    for name, s in report["splits"].items():
        c, g = s.get("classes"), s["geometry"]
        per = f"{c['min']}/{c['median']:g}/{c['max']}" if c else "-"
        imb = f"{c['imbalance']:g}x" if c and c["imbalance"] else "-"
        size = f"{g['width']['median']:g}x{g['height']['median']:g}" if g.get("images") else "-"
        aspect = f"{g['aspect_median']:.2f}" if g.get("images") else "-"
        kept = f"{g['kept_share_median'][mode]:.0%}" if g.get("images") else "-"
        t.add_row(name, str(s["images"]), str(len(c["counts"])) if c else "flat", per, imb, size, aspect, kept,
                  str(s["unreadable_total"]))
    return t


def print_findings(report: dict, console=None) -> None:
    """The summary table, then one line per finding."""
    from rich.markup import escape

    from vr.util.console import console as default_console

    con = console or default_console
    con.print(_summary_table(report))
    for f in report["findings"]:
        con.print(f"{_STYLE[f['level']]} {escape(f['message'])}", soft_wrap=True)
    n = sum(s["files"] for s in report["splits"].values())
    secs = report.get("seconds")
    con.print(f"[dim]{n} files checked{f' in {secs:.1f} s' if secs is not None else ''}; exact duplicates by "
              f"content hash, near-duplicates by phash distance <= {report['settings']['near_distance']}[/dim]")
