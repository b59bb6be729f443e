"""Open any image file as an RGB PIL image, or say clearly why it cannot be read."""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jfif"}
)


class UnreadableImage(Exception):
    """An image file that cannot be decoded; the message names the file and the reason."""


# PIL warns (DecompressionBombWarning) above Image.MAX_IMAGE_PIXELS and raises above twice that.
# The warning is not relied on: warnings.catch_warnings() is process-wide and not thread-safe, and
# images are checked in threads, where turning it into an error per call let bombs through now
# and then. The limit is checked explicitly (_refuse_bomb) and the warning silenced.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

# PIL's other warnings (corrupt EXIF, odd palettes, ...) would print as Python's two lines
# ("…/TiffImagePlugin.py:946: UserWarning: …" and the source line), naming neither vr nor the
# image. They become one "warning: IMAGE: message" line: the image being read is kept per thread
# (images are checked in threads and decoded in DataLoader workers).
_reading = threading.local()
_show_warning = warnings.showwarning


def _pil_warning(message, category, filename, lineno, file=None, line=None):
    if f"{os.sep}PIL{os.sep}" not in str(filename):
        return _show_warning(message, category, filename, lineno, file, line)
    from vr.util.console import warn
    from vr.util.paths import term

    path = getattr(_reading, "path", None)
    text = " ".join(str(message).split())
    warn(f"{term(path)}: {term(text)}" if path is not None else f"PIL: {term(text)}")


warnings.showwarning = _pil_warning


@contextlib.contextmanager
def _reading_file(path: Path):
    previous, _reading.path = getattr(_reading, "path", None), path
    try:
        yield
    finally:
        _reading.path = previous


def _refuse_bomb(path: Path, img: Image.Image) -> None:
    """Refuse, before decoding, an image with more pixels than PIL.Image.MAX_IMAGE_PIXELS."""
    limit = Image.MAX_IMAGE_PIXELS
    n = img.width * img.height
    if limit and n > limit:
        raise UnreadableImage(f"{path}: refused, too many pixels ({img.width}x{img.height} = {n} pixels, over "
                              f"PIL.Image.MAX_IMAGE_PIXELS = {limit}: a possible decompression bomb)")


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit and float images: scale the full range to 8 bits rather than clipping.
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") else max(float(arr.max()), 1.0)
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        # Composite on white: transparent pixels would otherwise come out with arbitrary colours.
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")


def load_rgb(path: str | Path) -> Image.Image:
    """Decode ``path`` fully, apply its EXIF orientation and return an RGB image.

    Raises UnreadableImage for zero-byte, truncated, corrupt or over-large (decompression bomb)
    files.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise UnreadableImage(f"{path}: empty file (0 bytes)")
        with _reading_file(path), Image.open(path) as img:
            _refuse_bomb(path, img)
            img.load()
            img = ImageOps.exif_transpose(img)
            return to_rgb(img)
    except UnreadableImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UnreadableImage(f"{path}: refused, too many pixels ({e})") from e
    except Exception as e:  # PIL raises many types for bad files
        raise UnreadableImage(f"{path}: cannot decode image ({type(e).__name__}: {e})") from e


def check_image(path: str | Path) -> str | None:
    """Return None if ``path`` decodes, else the reason. Cheap: JPEGs decode at reduced scale."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return f"{path}: empty file (0 bytes)"
        with _reading_file(path), Image.open(path) as img:
            _refuse_bomb(path, img)
            # draft() makes JPEG decode at 1/8 scale; the whole stream is still read, so
            # truncation is still caught.
            img.draft("RGB", (max(1, img.width // 8), max(1, img.height // 8)))
            img.load()
        return None
    except UnreadableImage as e:
        return str(e)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return f"{path}: refused, too many pixels ({e})"
    except Exception as e:
        return f"{path}: cannot decode image ({type(e).__name__}: {e})"
