"""Reading images and folders: modes, EXIF, unreadable files, class order."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vr.data.folders import scan_flat_folder, scan_image_folder

from vr.data.classes import ClassMap, natural_key
from vr.data.images import UnreadableImage, load_rgb
from vr.errors import VrError


def test_natural_order():
    names = ["10", "2", "1", "img10", "img9", "B", "a"]
    assert sorted(names, key=natural_key) == ["1", "2", "10", "a", "B", "img9", "img10"]
    assert ClassMap.from_folder_names([str(i) for i in range(100)]).names[:12] == tuple(str(i) for i in range(12))


def _awkward_images(folder):
    """One file per awkward mode; returns {name: expected (w, h) after EXIF}."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8))
    rgb.convert("L").save(folder / "grey.jpg")
    rgb.convert("RGBA").save(folder / "rgba.png")
    Image.fromarray(np.zeros((30, 40, 2), np.uint8) + 128, "LA").save(folder / "la.png")
    rgb.convert("P").save(folder / "palette.png")
    rgb.convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray((rng.integers(0, 65535, (30, 40))).astype(np.uint16)).save(folder / "deep16.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 on display: a 40x30 file shows as 30x40
    rgb.save(folder / "exif.jpg", exif=exif)
    return {"grey.jpg": (40, 30), "rgba.png": (40, 30), "la.png": (40, 30), "palette.png": (40, 30),
            "cmyk.jpg": (40, 30), "deep16.png": (40, 30), "exif.jpg": (30, 40)}


def test_load_rgb_every_mode(tmp_path):
    expected = _awkward_images(tmp_path)
    for name, size in expected.items():
        img = load_rgb(tmp_path / name)
        assert img.mode == "RGB", name
        assert img.size == size, name
    # 16-bit data is scaled, not clipped to white
    assert np.asarray(load_rgb(tmp_path / "deep16.png")).std() > 20


def test_unreadable_files_skipped_and_named(tmp_path, capsys):
    root = tmp_path / "train"
    good = root / "a"
    good.mkdir(parents=True)
    Image.new("RGB", (20, 20), (255, 0, 0)).save(good / "ok.png")
    (good / "zero.jpg").write_bytes(b"")
    data = (good / "ok.png").read_bytes()
    (good / "truncated.png").write_bytes(data[: len(data) // 2])
    (good / "garbage.jpg").write_bytes(b"not an image at all" * 10)
    (good / "notes.txt").write_text("ignored")
    (good / ".DS_Store").write_bytes(b"\0\0")
    (root / "empty").mkdir()
    res = scan_image_folder(root)
    err = capsys.readouterr().err
    assert [p.name for p, _ in res.samples] == ["ok.png"]
    assert len(res.skipped) == 3
    for name in ("zero.jpg", "truncated.png", "garbage.jpg"):
        assert name in err
    assert "notes.txt" not in err
    assert res.empty_classes == ["empty"]
    assert "has no images" in err
    with pytest.raises(UnreadableImage, match="zero.jpg"):
        load_rgb(good / "zero.jpg")


def test_val_class_missing_from_train_is_named(tmp_path):
    for split, names in (("train", ["a", "b"]), ("val", ["a", "zebra"])):
        for n in names:
            (tmp_path / split / n).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / split / n / "x.png")
    classes = scan_image_folder(tmp_path / "train").classes
    with pytest.raises(VrError, match="zebra"):
        scan_image_folder(tmp_path / "val", classes=classes, reference="train/")


def test_decompression_bomb_refused(tmp_path, monkeypatch):
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(UnreadableImage, match="too many pixels"):
        load_rgb(tmp_path / "big.png")


def test_flat_folder(tmp_path):
    with pytest.raises(VrError, match="not found"):
        scan_flat_folder(tmp_path / "nope")
    (tmp_path / "t").mkdir()
    with pytest.raises(VrError, match="no images"):
        scan_flat_folder(tmp_path / "t")
    for n in ("img10", "img2", "img1"):
        Image.new("RGB", (8, 8)).save(tmp_path / "t" / f"{n}.png")
    paths, skipped = scan_flat_folder(tmp_path / "t")
    assert [p.stem for p in paths] == ["img1", "img2", "img10"] and skipped == []
