"""Where vr keeps what it can recompute (per-image facts): $VR_CACHE_DIR, else
$XDG_CACHE_HOME/vr, else ~/.cache/vr. VR_CACHE_DIR=off (or empty) turns caching off.
Deleting the folder is always safe."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

OFF = ("", "0", "off", "none", "false")


def cache_dir(kind: str) -> Optional[Path]:
    """The folder for ``kind`` (not created here), or None when caching is off."""
    root = os.environ.get("VR_CACHE_DIR")
    if root is not None:
        if root.strip().lower() in OFF:
            return None
        base = Path(root)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = Path(xdg) / "vr" if xdg else Path.home() / ".cache" / "vr"
    return base / kind
