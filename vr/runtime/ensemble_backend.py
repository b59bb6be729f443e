"""Ensembles of model files (``A.pt+B.onnx``, weights ``A.pt@0.6+B.onnx@0.4``): the members'
probabilities, each from its own preprocessing and runtime, soft-voted (see vr.models.ensemble)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from vr.runtime.base import Predictor


@dataclass(frozen=True)
class EnsemblePrepare:
    """PIL image -> one prepared item per ensemble member, each by the member's own preparer."""

    parts: tuple

    def __call__(self, img: Image.Image) -> tuple:
        return tuple(p(img) for p in self.parts)


@dataclass(frozen=True)
class EnsembleSizedPrepare(EnsemblePrepare):
    """As EnsemblePrepare, with ``shape_for`` (when a member is a graph) so that the runner can
    batch the images by the shapes the graph members will be fed."""

    def shape_for(self, h: int, w: int) -> tuple:
        return tuple(p.shape_for(h, w) if hasattr(p, "shape_for") else None for p in self.parts)


class EnsemblePredictor(Predictor):
    """Soft vote: ``sum_i w_i * probs_i`` over member predictors, each with its own preprocessing,
    TTA and runtime, in the first member's class order (other orders are mapped by name).
    ``run_with_members`` also returns each member's probabilities (for the agreement report)."""

    def __init__(self, members: Sequence[Predictor], weights: Sequence[float], spec: str | Path,
                 orders: Sequence[Sequence[int] | None] | None = None):
        members = list(members)
        first = members[0]
        ttas = [m.tta for m in members]
        providers = list(dict.fromkeys(m.provider for m in members))
        precisions = list(dict.fromkeys(m.precision for m in members))
        super().__init__(Path(str(spec)), first.classes, ttas[0] if len(set(ttas)) == 1 else "+".join(ttas),
                         first.batch_size, runtime="ensemble", provider=" + ".join(providers),
                         preprocess=first.preprocess, precision="+".join(precisions))
        self.members = members
        total = float(sum(weights))
        self.weights = [float(w) / total for w in weights]
        self.orders = list(orders) if orders is not None else [None] * len(members)
        parts = tuple(m.preparer for m in members)
        sized = any(hasattr(p, "shape_for") for p in parts)
        self.preparer = EnsembleSizedPrepare(parts) if sized else EnsemblePrepare(parts)
        self.host_preprocess = "; ".join(f"{m.path.name}: {m.host_preprocess}" for m in members)
        self.notes = [f"{m.path.name}: {n}" for m in members for n in m.notes]
        self.execution_providers = list(dict.fromkeys(e for m in members for e in (m.execution_providers or [m.provider])))
        counts = self.param_counts()
        self.param_count = None if None in counts else int(sum(counts))

    def param_counts(self) -> list[int | None]:
        return [c for m in self.members for c in m.param_counts()]

    def run_with_members(self, prepared: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        """-> (ensemble probabilities [N, C], member probabilities [M, N, C]), float32."""
        out = []
        for i, (m, order) in enumerate(zip(self.members, self.orders)):
            p = np.asarray(m.run([item[i] for item in prepared]), dtype=np.float32)
            out.append(p[:, order] if order is not None else p)
        member_probs = np.stack(out)
        probs = np.tensordot(np.asarray(self.weights, dtype=np.float64), member_probs.astype(np.float64), axes=1)
        return self.check_probs(probs, len(prepared)), member_probs

    def run(self, prepared: Sequence[Any]) -> np.ndarray:
        return self.run_with_members(prepared)[0]

    def describe(self) -> dict:
        d = super().describe()
        d["members"] = [{"path": str(m.path), "weight": w, "runtime": m.runtime, "provider": m.provider,
                         "tta": m.tta, "precision": m.precision, "param_count": m.param_count,
                         "input_size": m.preprocess.input_size if m.preprocess is not None else None}
                        for m, w in zip(self.members, self.weights)]
        return d
