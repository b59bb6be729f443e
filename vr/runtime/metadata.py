"""vr's metadata for every artefact type, written, read and validated here only.

An ``.onnx`` file carries it in ``metadata_props`` (string values; lists and dicts as JSON); a
TensorRT ``.engine`` in the sidecar ``NAME.engine.json`` (a JSON object; values may be JSON
strings too). ``read_metadata`` gives both the same shape: JSON decoded, checked, with
``class_names`` (list of str), ``preprocess`` (dict, or None), ``tta``, ``precision`` and the rest.

The graph contract (input ``images`` uint8 [N, H, W, 3], output ``probs`` [N, C]) is declared here
as well, since every runtime and the exporter agree on it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vr.errors import VrError, first_line

INPUT_NAME = "images"
OUTPUT_NAME = "probs"
INPUT_CONTRACT = ("uint8 [N, H, W, 3] RGB, N/H/W dynamic; the images of one batch share one size "
                  "(feed differently sized images one at a time)")
JSON_KEYS = ("class_names", "preprocess", "members", "tensorrt", "golden", "precision_detail", "tta_scores")
INT_KEYS = ("opset", "param_count")


# --- writing -----------------------------------------------------------------------------------
def checkpoint_sha256(ckpt) -> str:
    """SHA-256 of the checkpoint's file ("" for one that is not on disk)."""
    from vr.util.io import file_sha256

    return file_sha256(ckpt.path) if ckpt.path is not None and Path(ckpt.path).is_file() else ""


def build_metadata(ckpt, *, tta: str, opset: int, resize_impl: str, height_first: bool,
                   param_count: int | None = None, precision: str = "fp32",
                   precision_detail: dict | None = None, sha256: str | None = None) -> dict[str, Any]:
    """One checkpoint's graph metadata (values JSON-able; ``encode`` makes them strings).
    ``sha256``: the checkpoint's hash when the caller has it already (else it is computed)."""
    import vr

    meta: dict[str, Any] = {
        "class_names": list(ckpt.classes.names),
        "preprocess": ckpt.preprocess.to_dict(),
        "tta": tta,
        "precision": precision,
        "checkpoint_sha256": checkpoint_sha256(ckpt) if sha256 is None else sha256,
        "vr_version": vr.__version__,
        "opset": int(opset),
        "input": f"{INPUT_NAME}: {INPUT_CONTRACT}",
        "output": f"{OUTPUT_NAME}: float32 [N, C] softmax probabilities averaged over the TTA views",
        "resize_impl": resize_impl,
        "resize_pass_order": ("height first when h - new_h > 2 * (w - new_w), else width first (Pillow >= 13)"
                              if height_first else "width first (Pillow < 13)"),
    }
    if param_count is not None:
        meta["param_count"] = int(param_count)
    if precision_detail:
        meta["precision_detail"] = precision_detail
    return meta


def build_ensemble_metadata(ckpts, weights, param_counts, **kw) -> dict[str, Any]:
    """The first member's keys (its preprocess, its class order: the ensemble's) plus ``members``
    and the total param_count. ``kw``: those of build_metadata but param_count."""
    shas = [checkpoint_sha256(c) for c in ckpts]  # each file hashed once (checkpoints can be GBs)
    meta = build_metadata(ckpts[0], param_count=sum(param_counts), sha256=shas[0], **kw)
    members = []
    for ckpt, sha, w, n in zip(ckpts, shas, weights, param_counts):
        members.append({"checkpoint": str(ckpt.path) if ckpt.path is not None else "",
                        "sha256": sha, "model": ckpt.model_name,
                        "preprocess": ckpt.preprocess.to_dict(), "weight": float(w), "param_count": int(n)})
    meta["members"] = members
    meta["checkpoint_sha256"] = "+".join(m["sha256"] for m in members)
    meta["output"] = (f"{OUTPUT_NAME}: float32 [N, C] weighted mean over the {len(members)} members (weights in "
                      f"members) of each member's softmax probabilities averaged over its TTA views")
    return meta


def encode(meta: dict[str, Any]) -> dict[str, str]:
    """String values for ONNX metadata_props: str as is, everything else as JSON."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


def sidecar_path(engine_path: str | Path) -> Path:
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def sidecar_text(meta: dict[str, Any]) -> str:
    return json.dumps(decode_values(meta), indent=2) + "\n"


# --- reading -----------------------------------------------------------------------------------
def _json_value(v: Any) -> Any:
    if isinstance(v, (bytes, bytearray)):
        v = v.decode("utf-8", "replace")
    if isinstance(v, str):
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v


def decode_values(props: dict) -> dict[str, Any]:
    """JSON-decode the keys that hold JSON (a string that is not JSON stays a string)."""
    out = dict(props)
    for k in JSON_KEYS + INT_KEYS:
        if k in out:
            out[k] = _json_value(out[k])
    return out


def validate(meta: dict[str, Any], source: Path) -> dict[str, Any]:
    """Check the keys every runtime relies on; one line naming ``source`` when one is wrong."""
    from vr.models.preprocess import Preprocess
    from vr.models.tta import TTA_MODES

    names = meta.get("class_names")
    if not isinstance(names, list) or not names:
        raise VrError(f"{source} was not exported by vr export: it carries no class_names metadata, so its outputs "
                      f"cannot be named (export the model with `vr export`)")
    meta["class_names"] = [str(n) for n in names]
    pre = meta.get("preprocess")
    if pre is not None:
        if not isinstance(pre, dict):
            raise VrError(f"{source} has unreadable preprocess metadata (not a JSON object)")
        try:
            Preprocess.from_dict(pre)
        except (TypeError, ValueError, VrError) as e:
            raise VrError(f"{source} has unreadable preprocess metadata: {first_line(e)}") from e
    meta["tta"] = meta.get("tta") or "none"
    if meta["tta"] not in TTA_MODES:
        raise VrError(f"{source} has unknown TTA metadata {meta['tta']!r}")
    meta["precision"] = meta.get("precision") or "fp32"
    for k in INT_KEYS:
        if k in meta:
            try:
                meta[k] = int(meta[k])
            except (TypeError, ValueError) as e:
                raise VrError(f"{source} has damaged vr metadata ({k} {meta[k]!r} is not a number)") from e
    if "members" in meta and not isinstance(meta["members"], list):
        raise VrError(f"{source} has damaged vr metadata (members is not a list)")
    return meta


def onnx_props(path: Path) -> dict[str, str]:
    """metadata_props of an .onnx file, without loading its weights' external data."""
    import onnx

    if not path.is_file():
        raise VrError(f"ONNX model not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # DecodeError, OSError, ...
        raise VrError(f"cannot read ONNX model {path}: {type(e).__name__}: {first_line(e)}") from e
    return {p.key: p.value for p in model.metadata_props}


def engine_sidecar(path: Path) -> Path:
    """``model.engine.json`` (what `vr export --trt` writes), else ``model.json``."""
    for cand in (sidecar_path(path), path.with_suffix(".json")):
        if cand.is_file():
            return cand
    raise VrError(f"{path} has no metadata sidecar {path.name}.json, so its class names are unknown "
                  f"(export the engine with `vr export --trt`)")


def read_sidecar(path: Path) -> dict:
    side = engine_sidecar(path)
    try:
        raw = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise VrError(f"cannot read {side}: {first_line(e)}") from e
    if not isinstance(raw, dict):
        raise VrError(f"{side} must hold a JSON object of metadata")
    return raw


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The vr metadata of an ``.onnx`` (metadata_props) or ``.engine`` (JSON sidecar), decoded and
    checked: class_names, preprocess (dict), tta, precision, opset, param_count, members, ..."""
    path = Path(path)
    if path.suffix.lower() == ".engine":
        return validate(decode_values(read_sidecar(path)), engine_sidecar(path))
    return validate(decode_values(onnx_props(path)), path)
