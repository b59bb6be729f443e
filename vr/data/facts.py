"""What each image file is (header, bytes hash, perceptual hash, readability), gathered in worker
threads and cached across runs.

`vr data check` and the readability check of `vr train` / `vr eval` / `vr submit` read the same
facts. The cache (vr.util.cache, kind ``image-facts``) holds one JSON file per image folder; an
entry is used only while the file's size, mtime and inode are those it was computed from, and
only for images that decoded (an unreadable file is looked at again every time). Writing the
cache is best effort: a read-only home only means no cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Optional

GREY = frozenset({"1", "L", "LA", "La", "I", "F", "I;16", "I;16B", "I;16L", "I;16N"})
ALPHA = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
HIGH_DEPTH = frozenset({"I", "F", "I;16", "I;16B", "I;16L", "I;16N"})
# Bump when what an entry means changes (its fields, the hash, the decode behind phash).
_VERSION = 1


@dataclass
class ImageFacts:
    """What one file is, from its header, its bytes and one reduced-size decode."""

    height: int = 0  # after EXIF orientation, as load_rgb returns it
    width: int = 0
    mode: str = ""
    high_depth: bool = False  # 16-bit (or 32-bit) samples
    alpha: bool = False
    digest: str = ""  # blake2b of the file bytes
    phash: Optional[int] = None  # 64-bit perceptual hash
    problem: Optional[str] = None  # why it cannot be read (vr skips it)


_FIELDS = [f.name for f in fields(ImageFacts)]
# A cached entry's values must have these types (problem: only readable images are cached).
_TYPES = (int, int, str, bool, bool, str, int, type(None))


def _header(im) -> tuple[int, int, str, bool, bool]:
    """(w, h, mode, high_depth, alpha) of an opened image, before it is decoded (the tile list
    and the size are the header's; draft() and load() change them)."""
    w, h = im.size
    rawmode = str(im.tile[0][3]) if im.tile else ""
    high = im.mode in HIGH_DEPTH or ";16" in rawmode  # 16-bit RGB PNGs open as mode RGB, rawmode RGB;16B
    alpha = im.mode in ALPHA or (im.mode == "P" and "transparency" in im.info)
    return w, h, im.mode, high, alpha


def _orientation(im) -> int:
    try:
        return im.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block: load_rgb's exif_transpose does not rotate either
        return 1


def _perceptual_hash(im) -> int:
    """phash (8x8 DCT bits) of a reduced-size decode, EXIF orientation applied."""
    import imagehash
    import numpy as np
    from PIL import ImageOps

    from vr.data.images import to_rgb

    # JPEG: decode at up to 1/8 scale (phash looks at 32x32), straight to grey; others ignore it
    im.draft("L", (32, 32))
    im.load()
    if _orientation(im) != 1:
        im = ImageOps.exif_transpose(im)
    if im.mode in HIGH_DEPTH:  # phash's convert("L") would clip 16-bit samples to white
        im = to_rgb(im)
    bits = imagehash.phash(im).hash.flatten()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def inspect_image(path: Path) -> ImageFacts:
    """Hash, header, perceptual hash and readability of one file (run in worker threads).

    One read and one reduced-size decode per file. Sizes come from the header (EXIF orientation
    applied, as load_rgb returns the image). A file that does not decode here, or is over PIL's
    pixel limit, gets vr.data.images.check_image's verdict, the reason vr train and vr submit
    give.
    """
    import io

    from PIL import Image

    from vr.data.images import check_image

    facts = ImageFacts()
    try:
        data = path.read_bytes()
    except OSError as e:
        facts.problem = f"{path}: cannot read file ({e.strerror or e})"
        return facts
    facts.digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h, facts.mode, facts.high_depth, facts.alpha = _header(im)
            limit = Image.MAX_IMAGE_PIXELS
            if limit and w * h > limit:
                raise ValueError("over the pixel limit")  # check_image words the refusal
            facts.phash = _perceptual_hash(im)
            # PNG keeps EXIF after the pixels, so orientation is read once they are loaded
            facts.height, facts.width = (w, h) if _orientation(im) in (5, 6, 7, 8) else (h, w)
    except Exception:  # PIL raises many types for bad files
        facts.problem = check_image(path)
    return facts


# --- the cache -------------------------------------------------------------------------------


def _stamp(path: Path) -> Optional[list[int]]:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _tag() -> str:
    """What the entries depend on besides the file: this format and Pillow's decoder."""
    import PIL

    return f"{_VERSION}/pillow-{PIL.__version__}"


class FactsCache:
    """The cached facts of the folders ``paths`` live in; ``save`` writes back what ``put`` added."""

    def __init__(self, paths: list[Path]):
        from vr.util.cache import cache_dir

        self.root = cache_dir("image-facts")
        self.tag = _tag() if self.root is not None else ""
        self.folders: dict[Path, dict] = {}
        self.dirty: set[Path] = set()
        if self.root is not None:
            for folder in {p.parent for p in paths}:
                self.folders[folder] = self._read(folder)

    def _file(self, folder: Path) -> Path:
        key = hashlib.blake2b(os.fsencode(str(folder.resolve())), digest_size=16).hexdigest()
        return self.root / f"{key}.json"

    def _read(self, folder: Path) -> dict:
        try:
            doc = json.loads(self._file(folder).read_text())
            if doc.get("tag") == self.tag and doc.get("folder") == str(folder.resolve()):
                return doc["files"]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass  # absent, from another version, or damaged: recomputed
        return {}

    def get(self, path: Path) -> Optional[ImageFacts]:
        entry = self.folders.get(path.parent, {}).get(path.name)
        if not isinstance(entry, list) or len(entry) != 2 or entry[0] != _stamp(path):
            return None
        values = entry[1]
        if not (isinstance(values, list) and len(values) == len(_TYPES)
                and all(type(v) is t for v, t in zip(values, _TYPES))):
            return None  # damaged: recomputed
        return ImageFacts(*values)

    def put(self, path: Path, facts: ImageFacts) -> None:
        stamp = _stamp(path)
        if self.root is None or facts.problem is not None or stamp is None:
            return
        self.folders.setdefault(path.parent, {})[path.name] = [stamp, list(astuple(facts))]
        self.dirty.add(path.parent)

    def save(self) -> None:
        from vr.util.io import atomic_write_text

        for folder in self.dirty:
            doc = {"tag": self.tag, "folder": str(folder.resolve()), "fields": _FIELDS,
                   "files": self.folders[folder]}
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                atomic_write_text(self._file(folder), json.dumps(doc, separators=(",", ":")))
            except (OSError, ValueError):  # a cache that cannot be written is no cache
                pass
        self.dirty.clear()


# --- many files ------------------------------------------------------------------------------


def default_workers() -> int:
    return max(1, min(8, 2 * (os.cpu_count() or 1)))


def inspect_all(paths: list[Path], workers: Optional[int] = None, progress: bool = False) -> list[ImageFacts]:
    """inspect_image over ``paths`` (cached ones read from the cache, the rest in a thread pool:
    decoding and hashing release the GIL), in the order of ``paths``."""
    from concurrent.futures import ThreadPoolExecutor

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from vr.util.console import err_console

    cache = FactsCache(paths)
    out: list[Optional[ImageFacts]] = [cache.get(p) for p in paths]
    todo = [i for i, f in enumerate(out) if f is None]
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool, \
            Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                     console=err_console, transient=True,
                     disable=not (progress and todo and err_console.is_terminal)) as bar:  # no bar in logs
        task = bar.add_task("checking images", total=len(paths), completed=len(paths) - len(todo))
        for n, (i, facts) in enumerate(zip(todo, pool.map(inspect_image, [paths[i] for i in todo])), 1):
            out[i] = facts
            cache.put(paths[i], facts)
            if n % 64 == 0:  # per-image updates cost as much as a tenth of the run
                bar.update(task, advance=64)
    cache.save()
    return out


def unreadable(paths: list[Path], inspect: bool = False, workers: int = 8) -> dict[Path, str]:
    """{path: reason} for the files that do not decode. Cached facts answer for the files they
    cover; the others get vr.data.images.check_image, or with ``inspect`` the whole
    inspect_image (cached for the data check that follows)."""
    if inspect:
        return {p: f.problem for p, f in zip(paths, inspect_all(paths, workers)) if f.problem is not None}
    from concurrent.futures import ThreadPoolExecutor

    from vr.data.images import check_image

    cache = FactsCache(paths)
    todo = [p for p in paths if cache.get(p) is None]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        reasons = pool.map(check_image, todo)
    return {p: r for p, r in zip(todo, reasons) if r is not None}
