"""The per-image facts cache (vr.data.facts): reruns read it, a changed file is looked at again,
unreadable files and a broken or unwritable cache are never trusted, and the data check's report
is the same with and without it."""

from __future__ import annotations

import json
import os

import pytest
from PIL import Image

from vr.data import facts as F
from vr.data.check import check_data


@pytest.fixture
def counted(monkeypatch, tmp_path):
    """A fresh cache folder; returns the list of paths inspect_image really looked at."""
    monkeypatch.setenv("VR_CACHE_DIR", str(tmp_path / "cache"))
    seen = []
    real = F.inspect_image

    def spy(path):
        seen.append(path)
        return real(path)

    monkeypatch.setattr(F, "inspect_image", spy)
    return seen


def _images(folder, n=6):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        paths.append(folder / f"im{i}.png")
        Image.new("RGB", (20 + i, 16), (40 * i, 10, 200)).save(paths[-1])
    return paths


def test_second_pass_reads_the_cache_and_gives_the_same_facts(counted, tmp_path):
    paths = _images(tmp_path / "a")
    first = F.inspect_all(paths)
    assert len(counted) == len(paths)
    second = F.inspect_all(paths)
    assert len(counted) == len(paths), "the second pass decoded images again"
    assert second == first and all(f.problem is None and f.phash is not None for f in second)


def test_changed_file_is_inspected_again(counted, tmp_path):
    paths = _images(tmp_path / "a")
    before = F.inspect_all(paths)
    Image.new("RGB", (64, 48), (0, 255, 0)).save(paths[2])  # new size and content
    after = F.inspect_all(paths)
    assert counted[len(paths):] == [paths[2]]
    assert (after[2].width, after[2].height) == (64, 48) and after[2].digest != before[2].digest
    assert after[:2] == before[:2]


def test_unreadable_files_are_never_cached(counted, tmp_path):
    paths = _images(tmp_path / "a", 3)
    bad = tmp_path / "a" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    for _ in range(2):
        out = F.inspect_all(paths + [bad])
        assert out[-1].problem and "broken.png" in out[-1].problem
    assert counted.count(bad) == 2
    assert F.unreadable(paths + [bad]) == {bad: out[-1].problem}


def test_verify_with_inspect_fills_the_cache_the_check_then_reads(counted, tmp_path):
    """vr train's scan decodes each image once for both itself and the data check."""
    data = tmp_path / "data"
    paths = _images(data / "train" / "x", 4) + _images(data / "val" / "x", 2)
    assert F.unreadable(paths, inspect=True) == {}
    assert len(counted) == 6
    report = check_data(data, input_size=16, progress=False)
    assert len(counted) == 6, "the data check decoded images the scan had just inspected"
    assert report["splits"]["train"]["images"] == 4


def test_report_is_the_same_with_the_cache_off(monkeypatch, tmp_path):
    data = tmp_path / "data"
    _images(data / "train" / "x", 4)
    _images(data / "val" / "x", 2)
    Image.open(data / "train" / "x" / "im0.png").save(data / "val" / "x" / "copy.png")  # a cross-split duplicate
    monkeypatch.setenv("VR_CACHE_DIR", str(tmp_path / "cache"))
    cold, warm = (check_data(data, input_size=16, progress=False) for _ in range(2))
    monkeypatch.setenv("VR_CACHE_DIR", "off")
    off = check_data(data, input_size=16, progress=False)
    for r in (cold, warm, off):
        r.pop("seconds")
    assert cold == warm == off
    assert cold["duplicates"]["exact"]["cross_split"]
    assert not (tmp_path / "cache_off").exists()


def test_damaged_or_foreign_cache_is_recomputed(counted, tmp_path):
    paths = _images(tmp_path / "a", 3)
    good = F.inspect_all(paths)
    (cache_file,) = (tmp_path / "cache" / "image-facts").iterdir()
    doc = json.loads(cache_file.read_text())
    doc["files"][paths[0].name][1][0] = "not a height"  # damaged entry
    doc["files"][paths[1].name] = [1, 2]  # wrong shape
    cache_file.write_text(json.dumps(doc))
    assert F.inspect_all(paths) == good
    assert counted[3:] == paths[:2]
    cache_file.write_text("{not json")
    assert F.inspect_all(paths) == good
    doc["tag"] = "0/pillow-0"  # written by another version
    cache_file.write_text(json.dumps(doc))
    assert F.inspect_all(paths) == good
    assert len(counted) >= 3 + 3 + 3


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a non-root POSIX user")
def test_unwritable_cache_is_no_cache(monkeypatch, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        monkeypatch.setenv("VR_CACHE_DIR", str(ro))
        paths = _images(tmp_path / "a", 2)
        assert [f.problem for f in F.inspect_all(paths)] == [None, None]
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)
