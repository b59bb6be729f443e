"""Strict validation of a rewritten ONNX graph: shape inference that checks every node's types
against its schema, then onnx.checker."""

from __future__ import annotations

from vr.errors import VrError, first_line


def checked_model(model, what: str):
    """Shape-infer strictly (every node's types checked against its schema) and run the checker."""
    import onnx
    from onnx import helper, shape_inference

    needed = helper.find_min_ir_version_for(list(model.opset_import), True)
    model.ir_version = max(model.ir_version, needed)
    try:
        model = shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
        onnx.checker.check_model(model)
    except Exception as e:
        raise VrError(f"{what} is not a valid ONNX model: {first_line(e)}") from e
    return model
