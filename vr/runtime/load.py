"""load_predictor: any model file (or ensemble spelling) behind the one interface, dispatched on
the format table (vr.formats)."""

from __future__ import annotations

from pathlib import Path

from vr.data.classes import ClassMap
from vr.errors import VrError
from vr.formats import by_runtime, format_for, load_object
from vr.runtime.base import Predictor


def check_tta(tta: str | None) -> None:
    from vr.models.tta import TTA_MODES

    if tta is not None and tta not in TTA_MODES:
        raise VrError(f"unknown TTA mode {tta!r}: use one of {', '.join(TTA_MODES)}")


def load_predictor(path: str | Path, device: str = "auto", tta: str | None = None, batch_size: int = 32,
                   host_resize: bool = True, *, runtime: str | None = None, metadata: dict | None = None,
                   threads: int | None = None, providers: list[str] | None = None) -> Predictor:
    """Load any model file behind the one interface.

    ``path`` may spell an ensemble, ``A.pt+B.onnx`` or ``A.pt@0.6+B.onnx@0.4`` (EnsemblePredictor).
    ``tta=None`` means the model's own: none for a checkpoint, the exported mode for a graph. A
    graph's TTA is baked in at export, so asking for another mode is an error. ``device`` is
    auto, cpu, cuda, cuda:N (or mps, for checkpoints); asking for CUDA and getting CPU is an error.
    ``runtime`` (a row of vr.formats.FORMATS) and ``metadata`` override what the file name and the
    file say: the exporter's gate loads temporary files that way. ``threads`` (ONNX Runtime's
    intra-op threads) and ``providers`` (exactly these ONNX Runtime execution providers) tune graphs.
    """
    check_tta(tta)
    if batch_size < 1:
        raise VrError(f"--batch-size must be positive (got {batch_size})")
    from vr.models.ensemble import is_ensemble_spec, parse_model_spec

    options = dict(device=device, tta=tta, batch_size=batch_size, host_resize=host_resize, threads=threads)
    if is_ensemble_spec(path):
        return load_ensemble(parse_model_spec(path), spec=path, **options)
    fmt = by_runtime(runtime) if runtime is not None else format_for(path)
    missing = fmt.missing_module()
    if missing is not None:
        raise VrError(f"{Path(path).name} is {fmt.noun.split(' ', 1)[0]} {fmt.name} but {missing} is not installed: "
                      f"{fmt.install} (needs {fmt.needs})")
    if metadata is not None:
        options["metadata"] = metadata
    if providers is not None:
        options["providers"] = providers
    return load_object(fmt.predictor)(path, **options)


def load_ensemble(members, spec: str | Path | None = None, **options) -> Predictor:
    """An EnsemblePredictor over ``members`` (vr.models.ensemble.MemberSpec), each loaded with
    ``options`` (those of load_predictor); class names checked."""
    from vr.models.ensemble import SEP, WEIGHT_SEP, class_order, normalised_weights
    from vr.runtime.ensemble_backend import EnsemblePredictor

    members = list(members)
    if len(members) < 2:
        raise VrError("an ensemble needs two or more models")
    loaded = [load_predictor(m.path, **options) for m in members]
    orders = class_order([(str(m.path), p.classes.names) for m, p in zip(members, loaded)])
    if spec is None:
        spec = SEP.join(str(m.path) + (f"{WEIGHT_SEP}{m.weight:g}" if m.weight is not None else "") for m in members)
    return EnsemblePredictor(loaded, normalised_weights(members), spec, orders)


def model_classes(path: str | Path) -> ClassMap:
    """The class vocabulary of a model file (or of an ensemble: its first member's, once all
    members are checked to know the same names), without building a runtime session."""
    from vr.models.ensemble import class_order, is_ensemble_spec, parse_model_spec

    if is_ensemble_spec(path):
        members = parse_model_spec(path)
        maps = [model_classes(m.path) for m in members]
        class_order([(str(m.path), c.names) for m, c in zip(members, maps)])
        return maps[0]
    path = Path(path)
    fmt = format_for(path)
    if fmt.runtime == "torch":
        from vr.models.checkpoint import load_checkpoint

        return load_checkpoint(path).classes
    from vr.runtime.metadata import read_metadata

    if fmt.runtime == "onnxruntime":
        from vr.runtime.onnxruntime_backend import check_onnx_file

        check_onnx_file(path)
    return ClassMap(tuple(read_metadata(path)["class_names"]))


def check_predictor_budget(predictor: Predictor, budget: int | None, label: str) -> int | None:
    """--max-params: one line when the model (all members together) is over ``budget``, or when a
    member's parameter count is unknown. Returns the total (None without a budget and a count)."""
    from vr.models.budget import check_param_budget

    counts = predictor.param_counts()
    if budget is None:
        return None if None in counts else int(sum(counts))
    if None in counts:
        unknown = next((m.path for m in getattr(predictor, "members", []) if None in m.param_counts()), predictor.path)
        raise VrError(f"cannot check --max-params for {label}: {unknown} carries no parameter count "
                      f"(not exported by this vr: re-export it with vr export)")
    what = f"{label} ({len(counts)} members)" if len(counts) > 1 else label
    return check_param_budget([int(c) for c in counts], budget, what=what)
