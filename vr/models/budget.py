"""Parameter budget: competitions cap model size (NYCU VRDL HW1: under 100M), ensembles included."""

from __future__ import annotations

import re
from typing import Iterable, Optional

from vr.errors import VrError
from vr.util.fmt import params as format_params

_UNITS = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9}


def parse_param_budget(text: str | int | None) -> Optional[int]:
    """'100M', '2.5m', '500K', '1e8' or an int -> a parameter count; None/'' -> no budget."""
    if text is None or text == "":
        return None
    if isinstance(text, int):
        n = text
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([kKmMbBgG]?)\s*", str(text))
        if not m:
            raise VrError(f"--max-params must look like 100M, 25.5M or 500K (got {text!r})")
        n = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if n <= 0:
        raise VrError(f"--max-params must be positive (got {text!r})")
    return n


def check_param_budget(counts: Iterable[int] | int, budget: Optional[int], what: str = "model") -> int:
    """Sum ``counts`` and raise one clear line when the total is over ``budget``; returns the total."""
    counts = [counts] if isinstance(counts, int) else list(counts)
    total = sum(counts)
    if budget is not None and total > budget:
        parts = " + ".join(format_params(c) for c in counts) if len(counts) > 1 else ""
        detail = f" ({parts})" if parts else ""
        raise VrError(
            f"{what} has {format_params(total)} parameters{detail}, over the --max-params budget of "
            f"{format_params(budget)} ({total:,} > {budget:,})"
        )
    return total


def model_param_count(name: str, num_classes: int) -> int:
    """Parameters of timm model ``name`` with ``num_classes`` outputs, without allocating its
    weights (built on the meta device; on the CPU if an architecture cannot be built there)."""
    import timm
    import torch

    from vr.models.factory import check_model_name, count_params, create_model

    check_model_name(name)
    try:
        with torch.device("meta"):
            return count_params(timm.create_model(name, pretrained=False, num_classes=num_classes))
    except Exception:
        return count_params(create_model(name, num_classes))
