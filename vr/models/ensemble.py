"""Soft-voting ensembles: how a command is told about one, member weights, and the class check.

Spellings, the same in `vr export`, `vr eval` and `vr submit`:

- ``A.pt+B.pt[+C.pt]``: one argument, one ensemble (in `vr eval`, separate arguments are separate
  models compared side by side);
- ``A.pt@0.6+B.pt@0.4``: the same with per-member weights (``@`` needs no shell quoting);
- `vr export A.pt B.pt` and `vr submit A.pt B.pt` also take the members as separate arguments,
  weighted with ``--weights 0.6,0.4``.

Weights must be positive and are normalised to sum 1; without weights the members count equally.
The ensemble's output is ``sum_i w_i * probs_i``, each member's probabilities coming from its own
preprocessing and TTA. Members must know the same class names; a member whose order differs is
mapped by name onto the first member's order (the ensemble's).

No torch here: the CLI configs import this module to validate their arguments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from vr.errors import VrError

SEP = "+"
WEIGHT_SEP = "@"
SPELLING = "A.pt+B.pt, or with weights A.pt@0.6+B.pt@0.4"


@dataclass(frozen=True)
class MemberSpec:
    path: Path
    weight: Optional[float] = None  # None: equal share


def _weight(text: str, what: str) -> float:
    try:
        w = float(text)
    except ValueError as e:
        raise VrError(f"cannot read the weight {text!r} in {what} (spell an ensemble {SPELLING})") from e
    if not math.isfinite(w) or w <= 0:
        raise VrError(f"ensemble weights must be positive numbers (got {text!r} in {what})")
    return w


def is_ensemble_spec(spec: str | Path) -> bool:
    """True for ``A.pt+B.pt`` / ``A.pt@w+...``; an existing file of that name is a single model."""
    text = str(spec)
    return (SEP in text or WEIGHT_SEP in text) and not Path(text).exists()


def parse_model_spec(spec: str | Path) -> list[MemberSpec]:
    """``A.pt`` -> one member; ``A.pt+B.pt`` / ``A.pt@0.6+B.pt@0.4`` -> the members, in order."""
    text = str(spec)
    if not is_ensemble_spec(text):
        return [MemberSpec(Path(text))]
    members = []
    for part in text.split(SEP):
        if not part.strip():
            raise VrError(f"{text!r} has an empty ensemble member (spell an ensemble {SPELLING})")
        path, weight = part, None
        if WEIGHT_SEP in part and not Path(part).exists():
            path, _, w = part.rpartition(WEIGHT_SEP)
            weight = _weight(w, repr(text))
            if not path:
                raise VrError(f"{text!r} has a weight without a model file (spell an ensemble {SPELLING})")
        members.append(MemberSpec(Path(path), weight))
    if len(members) == 1:
        raise VrError(f"{text!r}: a weight needs an ensemble of two or more models ({SPELLING})")
    if len({m.weight is None for m in members}) > 1:
        raise VrError(f"{text!r}: give every ensemble member a weight, or none")
    return members


def parse_weights(text: str | Sequence[float], count: int) -> list[float]:
    """``--weights 0.6,0.4`` -> [0.6, 0.4] (not yet normalised); ``count`` members must get one each."""
    # A YAML list arrives as its string form "[0.6, 0.4]".
    parts = [p.strip() for p in text.strip().strip("[]").split(",")] if isinstance(text, str) else [str(p) for p in text]
    weights = [_weight(p, "--weights") for p in parts if p != ""]
    if len(weights) != count:
        raise VrError(f"--weights has {len(weights)} value(s) for {count} model(s): give one weight per ensemble "
                      f"member, in the order of the models")
    return weights


def expand_members(specs: Sequence[str | Path], weights: str | Sequence[float] | None = None) -> list[MemberSpec]:
    """Several arguments (each a file or an ``A+B`` spec) -> one flat member list; ``weights``
    (``--weights``) applies to the flat list and cannot be combined with ``@`` weights."""
    members = [m for s in specs for m in parse_model_spec(s)]
    if weights is None or weights == "":
        return members
    if any(m.weight is not None for m in members):
        raise VrError("give the ensemble weights once: either --weights or @weights in the model names")
    if len(members) < 2:
        raise VrError("--weights needs an ensemble of two or more models")
    return [MemberSpec(m.path, w) for m, w in zip(members, parse_weights(weights, len(members)))]


def normalised_weights(members: Sequence[MemberSpec]) -> list[float]:
    """The members' weights scaled to sum 1 (equal shares when none are given)."""
    raw = [1.0 if m.weight is None else float(m.weight) for m in members]
    top = max(raw)
    if not (math.isfinite(top) and top > 0 and all(math.isfinite(w) and w > 0 for w in raw)):
        raise VrError(f"ensemble weights must be positive finite numbers (got {', '.join(f'{w:g}' for w in raw)})")
    scaled = [w / top for w in raw]  # 1e308 + 1e308 would overflow to inf and every weight to 0
    total = sum(scaled)
    return [w / total for w in scaled]


def class_order(named: Sequence[tuple[str, Sequence[str]]]) -> list[Optional[list[int]]]:
    """Check that every member knows the first member's class names; returns, per member, the
    indices that put its outputs in the first member's order (None where the order is the same).
    Raises one line naming the first difference."""
    first_name, first = named[0][0], list(named[0][1])
    out: list[Optional[list[int]]] = [None]
    for name, classes in named[1:]:
        classes = list(classes)
        if classes == first:
            out.append(None)
            continue
        missing = [c for c in first if c not in classes]
        extra = [c for c in classes if c not in first]
        if missing or extra:
            diff = (f"{name} lacks class {missing[0]!r} of {first_name}" if missing
                    else f"{name} has class {extra[0]!r}, which {first_name} lacks")
            raise VrError(f"ensemble members must share one class list: {diff} ({first_name}: {len(first)} classes, "
                          f"{name}: {len(classes)})")
        out.append([classes.index(c) for c in first])
    return out


def spec_label(spec: str | Path) -> str:
    """A short name for reports: the file stem, or for an ensemble the member stems joined by '+'
    (folder and stem where stems clash: runs/a/best.pt+runs/b/best.pt -> a_best+b_best)."""
    members = parse_model_spec(spec)
    stems = [m.path.stem for m in members]
    if len(members) == 1:
        return stems[0]
    if len(set(stems)) < len(stems):
        stems = [f"{m.path.parent.name}_{m.path.stem}" if m.path.parent.name else m.path.stem for m in members]
    return SEP.join(stems)
