"""Training batches travel as uint8 and are normalised on the device: the numbers the model sees
must be exactly those of the per-image float transform they replace."""

import numpy as np
import torch
from PIL import Image

from vr.models.preprocess import Preprocess
from vr.train.augment import TrainNormalize, build_train_transform


def _images(n=4):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (40 + 7 * i, 50, 3), dtype=np.uint8)) for i in range(n)]


def _pre():
    return Preprocess(input_size=32, resize_size=36, interpolation="bicubic")


def test_train_uint8_then_device_normalise_is_bitwise_the_float_transform():
    pre = _pre()
    kw = dict(hflip=0.5, color_jitter=0.4)
    as_float = build_train_transform(pre, "light", **kw)
    as_uint8 = build_train_transform(pre, "light", uint8=True, **kw)
    imgs = _images()
    torch.manual_seed(3)
    ref = torch.stack([as_float(im) for im in imgs])
    torch.manual_seed(3)
    raw = torch.stack([as_uint8(im) for im in imgs])
    assert raw.dtype == torch.uint8 and type(raw) is torch.Tensor
    out = TrainNormalize(pre)(raw)
    assert out.dtype == torch.float32
    assert torch.equal(out, ref)


def test_random_erasing_keeps_the_float_path_and_passes_through():
    pre = _pre()
    tf = build_train_transform(pre, "light", uint8=True, random_erasing=1.0)
    x = torch.stack([tf(im) for im in _images(2)])
    assert x.dtype == torch.float32
    assert TrainNormalize(pre)(x) is x


def test_val_uint8_then_preprocess_normalize_is_bitwise_preprocess():
    pre = _pre()
    imgs = [im.resize((48, 48)) for im in _images()]  # one size: a batch
    ref = torch.stack([pre(im) for im in imgs])
    out = pre.normalize(torch.stack([pre.to_uint8(im) for im in imgs]))
    assert torch.equal(out, ref)
