"""Tiny real models and image folders for the eval/submit tests (no trainer needed).

Images are colour-coded: each class is a colour plus noise. The checkpoint is a random-init timm
``test_resnet`` whose classifier is set, in closed form, to the nearest class mean of its own
pooled features on such images, so it really classifies (accuracy 1.0 on these folders) without
any training loop. The hand-built ONNX graph follows the `vr export` contract (uint8 [N,H,W,3]
``images`` -> ``probs`` [N,C], metadata_props) and classifies by mean colour.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"red": (215, 35, 30), "green": (30, 195, 45), "blue": (35, 45, 220), "yellow": (225, 215, 30),
           "purple": (150, 30, 170)}
SIZES = [(40, 48), (48, 40), (36, 36), (52, 44)]  # (w, h): mixed sizes and orientations


def colour_image(rgb, size=(40, 48), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    arr = np.clip(np.array(rgb, dtype=np.int16) + rng.integers(-25, 26, (h, w, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def write_image_folder(root: Path, class_colours: dict[str, tuple], per_class: int = 3, seed: int = 0) -> Path:
    """root/<class>/<class>_<i>.png, sizes cycling through SIZES."""
    k = seed
    for name, rgb in class_colours.items():
        d = Path(root) / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            colour_image(rgb, SIZES[(k + i) % len(SIZES)], seed=1000 * seed + k * 31 + i).save(d / f"{name}_{i}.png")
        k += 1
    return Path(root)


def preprocess():
    from vr.models.preprocess import Preprocess

    return Preprocess(input_size=32, resize_size=36, interpolation="bilinear", mean=(0.5, 0.5, 0.5),
                      std=(0.5, 0.5, 0.5))


def make_checkpoint(path: Path, class_colours: dict[str, tuple], seed: int = 0) -> Path:
    """A real test_resnet checkpoint whose head is the nearest-class-mean classifier of its features."""
    import timm
    import torch

    from vr.data.classes import ClassMap
    from vr.models.checkpoint import Checkpoint, save_checkpoint
    from vr.models.tta import batch_views

    names = list(class_colours)
    torch.manual_seed(seed)
    model = timm.create_model("test_resnet", num_classes=len(names)).eval()
    pre = preprocess()
    imgs = [colour_image(rgb, SIZES[i % len(SIZES)], seed=500 + i) for rgb in class_colours.values() for i in range(4)]
    x = batch_views(imgs, pre, "none")[:, 0]
    with torch.no_grad():
        feats = model.forward_head(model.forward_features(x), pre_logits=True)
        mu = feats.view(len(names), 4, -1).mean(1)
        # logits = s * (f . mu_c - |mu_c|^2 / 2): argmax is the nearest class mean
        spread = torch.cdist(mu, mu).max().clamp_min(1e-6)
        scale = 20.0 / float(spread) ** 2
        model.get_classifier().weight.copy_(scale * mu)
        model.get_classifier().bias.copy_(-0.5 * scale * (mu * mu).sum(1))
    ckpt = Checkpoint(model_name="test_resnet", num_classes=len(names), state_dict=model.state_dict(),
                      classes=ClassMap(tuple(names)), preprocess=pre, config={"made_by": "tests"})
    save_checkpoint(path, ckpt)
    return Path(path)


def make_onnx(path: Path, class_colours: dict[str, tuple], tta: str = "none", with_classes: bool = True,
              scale: float = 40.0) -> Path:
    """Mean-colour classifier with the `vr export` interface and metadata."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    names = list(class_colours)
    mu = np.array([class_colours[n] for n in names], dtype=np.float32) / 255.0  # [C, 3]
    w = (scale * mu.T).astype(np.float32)  # [3, C]
    b = (-0.5 * scale * (mu * mu).sum(1)).astype(np.float32)
    nodes = [
        helper.make_node("Cast", ["images"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["xf", "axes"], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "inv255"], ["m01"]),
        helper.make_node("MatMul", ["m01", "W"], ["z"]),
        helper.make_node("Add", ["z", "B"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    inits = [numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "axes"),
             numpy_helper.from_array(np.array(1 / 255.0, dtype=np.float32), "inv255"),
             numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")]
    graph = helper.make_graph(
        nodes, "colour", [helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", "H", "W", 3])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", len(names)])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    meta = {"preprocess": json.dumps(preprocess().to_dict()), "tta": tta, "checkpoint_sha256": "0" * 64,
            "vr_version": "test", "opset": "18"}
    if with_classes:
        meta["class_names"] = json.dumps(names)
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)
