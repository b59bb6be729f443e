"""`vr data check`: findings on tiny generated sets, and the command end to end."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vr.data.check import check_data, kept_share, run_data_check
from vr.data.check_dups import hash_pairs


def _picture(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A smooth random picture: distinct perceptual hashes for distinct seeds (unlike flat colours)."""
    low = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return Image.fromarray(low, "RGB").resize((w, h), Image.BICUBIC)


def _write_set(root: Path, per_class: dict[str, int], size=(40, 40), seed=0, ext="png") -> Path:
    rng = np.random.default_rng(seed)
    for name, n in per_class.items():
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _picture(rng, *size).save(d / f"img{i}.{ext}")
    return root


def _data(tmp_path: Path, train=None, val=None, size=(40, 40)) -> Path:
    root = tmp_path / "data"
    _write_set(root / "train", train or {"a": 6, "b": 6}, size, seed=0)
    _write_set(root / "val", val or {"a": 3, "b": 3}, size, seed=1)
    return root


def _check(root: Path, **kw) -> dict:
    kw = {"input_size": 32, "resize_size": 36, "progress": False, "workers": 2, **kw}
    return check_data(root, **kw)


def _findings(report: dict, level: str | None = None, topic: str | None = None) -> list[dict]:
    return [f for f in report["findings"] if (level is None or f["level"] == level)
            and (topic is None or f["topic"] == topic)]


def test_wide_images_get_the_crop_advice(tmp_path):
    report = _check(_data(tmp_path, size=(64, 32)))
    g = report["splits"]["train"]["geometry"]
    assert g["aspect_median"] == 2.0 and g["elongation_median"] == 2.0
    # shorter side 32 -> 36, longer 72; the 32x32 crop keeps 1024 / (36 * 72) of the image
    assert g["kept_share_median"]["center"] == pytest.approx(32 * 32 / (36 * 72), abs=1e-4)
    assert g["kept_share_median"]["pad"] == pytest.approx(32 / 36, abs=1e-4)  # all the height, 32 of 36 wide
    (crop,) = _findings(report, "warn", "crop")
    assert "--crop-mode squash" in crop["message"] and "--crop-mode pad" in crop["message"]
    assert "keeps 40%" in crop["message"] and crop["action"] == "--crop-mode squash or --crop-mode pad"
    # judged with squash: no crop warning, the stretch is stated
    squash = _check(tmp_path / "data", crop_mode="squash")
    assert not _findings(squash, "warn", "crop")
    assert "stretches it 2.00x" in _findings(squash, "info", "crop")[0]["message"]


def test_sizes_follow_exif_orientation(tmp_path):
    root = _data(tmp_path, size=(40, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display: a 64x32 file is a 32x64 picture
    rng = np.random.default_rng(3)
    for i in range(20):
        _picture(rng, 64, 32).save(root / f"train/a/rot{i}.jpg", exif=exif.tobytes())
    g = _check(root)["splits"]["train"]["geometry"]
    assert g["common_sizes"]["32x64"] == 20 and "64x32" not in g["common_sizes"]
    assert g["aspect_buckets"]["0.5-0.8"] == 20


def test_square_images_get_no_crop_warning(tmp_path):
    report = _check(_data(tmp_path, size=(40, 40)))
    assert not _findings(report, "warn", "crop")
    assert _findings(report, "info", "crop")[0]["message"].endswith("fine")


def test_kept_share_matches_the_preprocessing_geometry():
    # Preprocess.resized_hw floors the longer side: 30x100 -> shorter 256, longer floor(256 * 100 / 30)
    assert kept_share(30, 100, 224, 256, "center") == pytest.approx(224 * 224 / (256 * int(256 * 100 / 30)))
    assert kept_share(100, 100, 224, 256, "squash") == pytest.approx((224 / 256) ** 2)
    assert kept_share(30, 100, 224, 256, "pad") == pytest.approx(224 / 256)  # letterboxed: 76 x 256, crop 224
    # a 10% border crop of 100x100 leaves 80x80 (64% of the area) before the resize
    assert kept_share(100, 100, 224, 256, "center", border_crop=0.1) == pytest.approx(0.64 * (224 / 256) ** 2)


def test_image_copied_from_train_into_val_is_an_exact_cross_split_duplicate(tmp_path):
    root = _data(tmp_path)
    shutil.copy(root / "train/a/img0.png", root / "val/b/copy.png")
    report = _check(root)
    exact = report["duplicates"]["exact"]
    assert exact["cross_split"] == {"val/train": 1}
    assert exact["listed"][0]["kind"] == "cross_split"
    assert sorted(exact["listed"][0]["files"]) == ["train/a/img0.png", "val/b/copy.png"]
    (leak,) = _findings(report, "warn", "leakage")
    assert leak["message"].startswith("1 image of val/ also in train/ (exact copies)")
    assert "remove them from one split" in leak["message"]
    # an exact copy is not reported again as a near-duplicate
    assert report["duplicates"]["near"]["cross_split"] == {}


def test_resized_reencoded_copy_is_a_near_duplicate(tmp_path):
    root = _data(tmp_path, size=(64, 48))
    src = Image.open(root / "train/b/img2.png").convert("RGB")
    src.resize((56, 42), Image.BILINEAR).save(root / "val/b/near.jpg", quality=80)
    report = _check(root)
    near = report["duplicates"]["near"]
    assert near["cross_split"] == {"val/train": 1}
    assert near["pairs"] == 1  # the random pictures are far apart
    assert near["listed"][0]["files"] == ["val/b/near.jpg", "train/b/img2.png"]
    assert near["listed"][0]["distance"] <= near["max_distance"]
    assert report["duplicates"]["exact"]["groups"] == 0
    (leak,) = _findings(report, "warn", "leakage")
    assert "near-duplicate in train/" in leak["message"] and "val/b/near.jpg" in leak["message"]


def test_hash_pairs_matches_a_plain_search():
    rng = random.Random(0)
    hashes = [rng.getrandbits(64) for _ in range(300)]  # more than one block of rows
    hashes[250] = hashes[3] ^ 0b1011  # distance 3, rows in different blocks
    hashes[130] = hashes[129] ^ (1 << 63)  # distance 1 in the top bit
    want = sorted((i, j, bin(a ^ b).count("1")) for i, a in enumerate(hashes) for j, b in enumerate(hashes)
                  if i < j and bin(a ^ b).count("1") <= 4)
    got, truncated = hash_pairs(hashes, 4)
    assert sorted(got) == want and not truncated
    assert (3, 250, 3) in want and (129, 130, 1) in want


def test_same_image_in_two_classes_is_a_label_conflict(tmp_path):
    root = _data(tmp_path)
    shutil.copy(root / "train/a/img1.png", root / "train/b/also.png")
    report = _check(root)
    assert report["duplicates"]["exact"]["label_conflicts"] == {"train": 1}
    assert any("label conflict" in f["message"] for f in _findings(report, "warn", "duplicates"))


def test_modes_and_unreadable_files_are_counted(tmp_path):
    root = _data(tmp_path)
    d = root / "train/a"
    rng = np.random.default_rng(5)
    _picture(rng, 40, 40).convert("L").save(d / "grey.png")
    _picture(rng, 40, 40).convert("RGBA").save(d / "alpha.png")
    _picture(rng, 40, 40).convert("CMYK").save(d / "cmyk.jpg")
    Image.fromarray((rng.random((40, 40)) * 65535).astype(np.uint16)).save(d / "deep.png")
    _picture(rng, 200, 200).save(d / "whole.jpg", quality=95)
    data = (d / "whole.jpg").read_bytes()
    (d / "cut.jpg").write_bytes(data[: len(data) // 2])
    (d / "whole.jpg").unlink()
    (d / "empty.png").write_bytes(b"")
    (d / "text.jpg").write_text("not an image")
    s = _check(root)["splits"]["train"]
    assert s["counts"]["greyscale"] == 2  # L and 16-bit greyscale
    assert s["counts"]["alpha"] == 1 and s["counts"]["cmyk"] == 1 and s["counts"]["16_bit"] == 1
    assert {k: v["count"] for k, v in s["unreadable"].items()} == {"not_an_image": 1, "truncated": 1,
                                                                   "zero_bytes": 1}
    assert s["unreadable_total"] == 3 and s["files"] == 12 + 7 and s["images"] == 12 + 4
    report = _check(root)
    msgs = [f["message"] for f in report["findings"]]
    assert any(m.startswith("2 greyscale images (train 2): fine, read as RGB") for m in msgs)
    (bad,) = _findings(report, "warn", "unreadable")
    assert "3 unreadable images in train/ (1 not an image, 1 truncated, 1 zero bytes)" in bad["message"]
    assert "replace or delete them" in bad["message"]


def test_image_over_the_pixel_limit_is_refused_unread(tmp_path, monkeypatch):
    root = _data(tmp_path, size=(40, 40))
    _picture(np.random.default_rng(4), 80, 80).save(root / "train/a/big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # 40x40 passes, 80x80 does not
    s = _check(root)["splits"]["train"]
    assert s["unreadable"] == {"too_large": {"count": 1, "examples": ["train/a/big.png"]}}


def test_imbalanced_train_set_gets_the_balance_advice(tmp_path):
    report = _check(_data(tmp_path, train={"a": 30, "b": 5}))
    c = report["splits"]["train"]["classes"]
    assert (c["min"], c["max"], c["imbalance"]) == (5, 30, 6.0)
    (bal,) = _findings(report, "warn", "balance")
    assert "imbalance 6x (5 to 30 images per class" in bal["message"]
    assert "--balance sampler or --balance weights" in bal["message"]


def test_balanced_set_gets_no_balance_warning(tmp_path):
    report = _check(_data(tmp_path))
    assert not _findings(report, "warn", "balance")
    assert report["findings"][-1]["message"] == "nothing to change"


def test_layout_problems_and_class_mismatches(tmp_path):
    root = _data(tmp_path, val={"a": 2, "b": 2, "c": 2})
    rng = np.random.default_rng(9)
    _picture(rng, 40, 40).save(root / "train/loose.png")
    (root / "train/a/extra").mkdir()
    _picture(rng, 40, 40).save(root / "train/a/extra/deep.png")
    (root / "train/a/.hidden.png").write_bytes(b"x")
    (root / "train/a/notes.txt").write_text("x")
    (root / "train/empty").mkdir()
    (root / "test/sub").mkdir(parents=True)
    _picture(rng, 40, 40).save(root / "test/one.png")
    _picture(rng, 40, 40).save(root / "test/one.jpg")
    _picture(rng, 40, 40).save(root / "test/sub/x.png")
    report = _check(root)
    kinds = {(p["split"], p["kind"]): p["count"] for p in report["layout_problems"]}
    assert kinds == {("train", "images_outside_classes"): 1, ("train", "nested_folders"): 1,
                     ("train", "non_image_files"): 1, ("train", "hidden_files"): 1,
                     ("test", "subfolders"): 1, ("test", "stem_clash"): 2}
    assert report["classes"]["only_in_val"] == ["c"]
    assert report["classes"]["missing_from_val"] == ["empty"]
    assert report["splits"]["train"]["classes"]["empty"] == ["empty"]
    errors = [f["message"] for f in _findings(report, "error")]
    assert any(m.startswith("1 class in val/ is not in train/ (c): vr train refuses this") for m in errors)
    assert any("share a file stem" in m for m in errors)
    assert report["findings"][0]["level"] == "error"  # errors first


def test_single_image_folder_is_checked(tmp_path):
    root = _write_set(tmp_path / "pets", {"cat": 4, "dog": 4}, size=(30, 60))
    report = _check(root)
    assert report["layout"] == "imagefolder" and list(report["splits"]) == ["pets"]
    assert report["splits"]["pets"]["classes"]["counts"] == {"cat": 4, "dog": 4}
    assert _findings(report, "warn", "crop")  # portrait 1:2 images


def test_run_data_check_writes_the_report(tmp_path, capsys):
    root = _data(tmp_path, size=(64, 32))
    out = tmp_path / "run" / "data_check.json"
    report = run_data_check(root, 32, 36, "center", out_json=out, quiet=True)
    assert capsys.readouterr().out == ""
    assert json.loads(out.read_text())["findings"] == report["findings"]
    run_data_check(root, 32, 36, "center")
    printed = capsys.readouterr().out
    assert "--crop-mode squash or --crop-mode pad" in printed and "train" in printed


def test_cli_json_and_out(tmp_path, cli):
    root = _data(tmp_path, size=(64, 32))
    shutil.copy(root / "train/a/img0.png", root / "val/a/dup.png")
    out = tmp_path / "check.json"
    code, stdout, _ = cli("data", "check", root, "--json", "--img-size", "32", "--crop-pct", "0.9",
                          "--out", out, "--workers", "2")
    assert code == 0
    report = json.loads(stdout)
    assert report["settings"]["input_size"] == 32 and report["settings"]["resize_size"] == 35
    assert report["duplicates"]["exact"]["cross_split"] == {"val/train": 1}
    assert json.loads(out.read_text())["findings"] == report["findings"]


def test_cli_table(tmp_path, cli):
    root = _data(tmp_path, size=(64, 32))
    code, stdout, _ = cli("data", "check", root, "--img-size", "32")
    assert code == 0
    assert "center keeps" in stdout and "use --crop-mode squash or --crop-mode pad" in stdout


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_cli_missing_or_empty_folder_is_one_error_line(tmp_path, cli, make):
    target = tmp_path / "nothing"
    if make == "empty":
        (target / "train/a").mkdir(parents=True)
        (target / "train/a/readme.txt").write_text("x")
    code, stdout, stderr = cli("data", "check", target)
    assert code == 2 and stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and str(target) in lines[0]


def test_cli_bad_option_is_refused(tmp_path, cli):
    code, _, stderr = cli("data", "check", _data(tmp_path), "--crop-pct", "1.5")
    assert code == 2 and "--crop-pct must be in (0, 1]" in stderr
