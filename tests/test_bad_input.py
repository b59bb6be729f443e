"""Issue 7: bad input, crashes and untrusted files. Nothing breaks, leaks or runs.

Every case ends either in success or in a non-zero exit with ONE line naming the problem: no
Python traceback, and no half-written file (every write is atomic). The CLI runs end to end:
in-process through ``vr.cli.main`` where that is enough, in a subprocess for signals.

Sections: 1 training data, 2 eval, 3 submit, 4 arguments, 5 untrusted files, 6 crashes, and
extra cases found on the way (unicode names, malformed CSVs to --check, symlink loops, ...).
"""

from __future__ import annotations

import ast
import contextlib
import errno
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import eval_helpers as H
from conftest import CLASS_COLOURS, TINY_TRAIN, colour_image, run_vr, signal_after_first_epoch, write_image_folder
from vr.cli import main
from vr.data.images import check_image, load_rgb
from vr.models.checkpoint import load_checkpoint
from vr.errors import VrError

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
# stdout and stderr as on a UTF-8 desktop terminal: text that is not UTF-8 is an error, not escaped
# (in the C/POSIX locale Python would quietly write the raw bytes back)
STRICT_UTF8 = dict(ENV, PYTHONIOENCODING="utf-8:strict")
FAST = [*TINY_TRAIN, "--no-tensorboard"]
RGB = {k: H.COLOURS[k] for k in ("red", "green", "blue")}
# vr checks the pixel count itself and silences PIL's warning, but pytest resets warning filters
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")


# --- helpers ---------------------------------------------------------------------------------
def run_cli(*args) -> tuple[int, str, str]:
    """`vr ARGS` in-process, capturing what the rich consoles print (usable in module fixtures)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def one_error(code: int, out: str, err: str, *needles: str, exit_code: int = 2) -> str:
    """The run failed with ``exit_code`` and exactly one error line (warnings aside) holding
    every needle, and no traceback anywhere. Returns the line."""
    assert "Traceback" not in out + err, err[-3000:]
    assert code == exit_code, (code, out[-2000:], err[-2000:])
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning:")]
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("error: "), line
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def temp_files(folder: Path) -> list[Path]:
    """Leftovers of vr.util.io.atomic_path (.NAME.XXXX.tmp), anywhere under ``folder``."""
    return sorted(p for p in Path(folder).rglob(".*.tmp"))


def write_bomb_png(path: Path, side: int = 10_000) -> Path:
    """A real, valid 1-bit PNG of side x side pixels (over PIL's MAX_IMAGE_PIXELS at 10000)
    that compresses to ~12 KB; written chunk by chunk, so it costs nothing to make."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (side + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def truncated_jpeg(path: Path, seed: int = 0) -> Path:
    buf = io.BytesIO()
    colour_image(np.random.default_rng(seed), (120, 80, 40), (48, 40)).save(buf, format="JPEG", quality=95)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


def small_dataset(root: Path, per_class: int = 4) -> Path:
    """root/{train,val}/{1,2,10}/: per_class train and 2 val images per class (one batch of 8
    per epoch with FAST's --batch-size 8)."""
    write_image_folder(root / "train", per_class, seed=0)
    write_image_folder(root / "val", 2, seed=1)
    return root


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes): what "nothing changed" is checked against."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(folder: Path) -> list[Path]:
    """Temporary files, commit journals and backup links that a finished command must not leave."""
    return sorted(p for p in Path(folder).rglob(".*") if p.suffix in (".tmp", ".old") or p.name.startswith(".vr-commit."))


def fake_run(folder: Path, ckpt: Path) -> Path:
    """A folder as `vr train` leaves it: best.pt, metrics.csv, config.yaml and its manifest.json."""
    from vr.util.manifest import collect_manifest

    folder.mkdir(parents=True)
    shutil.copy(ckpt, folder / "best.pt")
    (folder / "metrics.csv").write_text("epoch,train_loss\n1,0.5\n")
    (folder / "config.yaml").write_text("model: test_resnet\n")
    (folder / "manifest.json").write_text(json.dumps(collect_manifest({}, argv=["vr", "train", "DATA", "--out", str(folder)])))
    return folder


def nan_checkpoint(src: Path, dst: Path) -> Path:
    """``src`` with NaN classifier weights: a diverged run's checkpoint, valid in every other way."""
    from vr.models.checkpoint import save_checkpoint

    ck = load_checkpoint(src)
    ck.state_dict["fc.weight"] = torch.full_like(ck.state_dict["fc.weight"], float("nan"))
    save_checkpoint(dst, ck)
    return dst


def nan_graph(dst: Path) -> Path:
    """A graph with the `vr export` interface whose probabilities are all NaN (a broken export)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(H.make_onnx(dst, RGB)))
    for t in model.graph.initializer:
        if t.name == "B":
            t.CopyFrom(numpy_helper.from_array(np.full(len(RGB), np.nan, np.float32), "B"))
    onnx.save(model, str(dst))
    return dst


def non_utf8(folder: Path, name: bytes) -> Path:
    """``folder``/``name`` for a name that is not UTF-8 (legal on Linux): Python's surrogate-escaped path."""
    return Path(os.fsdecode(os.fsencode(folder) + b"/" + name))


# A `vr ...` (the arguments after READY and STOP) killed with SIGKILL by the test while it commits
# a group of files: right after the rename of STOP into place it touches READY and sleeps.
COMMIT_KILL_HELPER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    ready, stop = Path(sys.argv[1]), sys.argv[2]
    real = os.replace
    def replace(src, dst, *a, **k):
        real(src, dst, *a, **k)
        if str(dst) == stop:
            ready.touch()
            time.sleep(120)
    os.replace = replace
    from vr.cli import main
    sys.exit(main(sys.argv[3:]))
""")


def kill_during_commit(stop: Path, args: list, ready: Path) -> None:
    p = subprocess.Popen([sys.executable, "-c", COMMIT_KILL_HELPER, str(ready), str(stop), *map(str, args)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline, "the command never reached the commit"
            time.sleep(0.02)
        p.kill()
        p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Read-only for the tests that use it (they write runs elsewhere)."""
    return small_dataset(tmp_path_factory.mktemp("bad_input_data") / "data")


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """A real test_resnet checkpoint that classifies red/green/blue images, and such images."""
    d = tmp_path_factory.mktemp("bad_input_kit")
    return {"ckpt": H.make_checkpoint(d / "best.pt", RGB), "val": H.write_image_folder(d / "val", RGB, per_class=2),
            "dir": d}


# =============================================================================================
# 1. Training data
# =============================================================================================
AWKWARD = ["grey.jpg", "rgba.png", "palette.png", "cmyk.jpg", "deep16.png", "exif.jpg", "huge.jpg",
           "UPPER.PNG", "png_named.jpg", "été_猫.png"]
UNREADABLE = ["truncated.jpg", "zero.png"]
IGNORED = ["notes.txt", ".DS_Store", "loop.jpg", "dangling.png", "folder.png"]


@pytest.fixture(scope="module")
def awkward_run(tmp_path_factory):
    """One `vr train` over a train/ folder full of awkward, broken and foreign files."""
    root = tmp_path_factory.mktemp("awkward")
    data = small_dataset(root / "data")
    t1, t2, t10 = (data / "train" / c for c in ("1", "2", "10"))
    rng = np.random.default_rng(0)
    base = colour_image(rng, CLASS_COLOURS["1"], (40, 30))  # non-square: w 40, h 30
    # valid but awkward
    base.convert("L").save(t1 / "grey.jpg")
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.fromarray(rng.integers(0, 256, (30, 40), dtype=np.uint8)))
    rgba.save(t1 / "rgba.png")
    base.convert("P").save(t1 / "palette.png")
    base.convert("CMYK").save(t1 / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 65535, (30, 40)).astype(np.uint16)).save(t1 / "deep16.png")
    # EXIF orientation 6 (rotate 90 clockwise to display): a red block at the stored top-left
    # shows at the top-right of a 30 x 40 (w x h) picture.
    marked = np.zeros((30, 40, 3), np.uint8)
    marked[:12, :12] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(marked).save(t1 / "exif.jpg", exif=exif, quality=95)
    Image.new("L", (9000, 9000), 90).save(t1 / "huge.jpg", quality=50)
    base.save(t1 / "UPPER.PNG")
    base.save(t1 / "png_named.jpg", format="PNG")  # content decides, not the extension
    base.save(t1 / "été_猫.png")
    # unreadable: skipped with a warning naming each
    truncated_jpeg(t2 / "truncated.jpg")
    (t2 / "zero.png").write_bytes(b"")
    write_bomb_png(t2 / "bomb.png")
    # not images: ignored without a word
    (t10 / "notes.txt").write_text("not an image")
    (t10 / ".DS_Store").write_bytes(b"\0\0\0\1Bud1" + bytes(range(256)))
    os.symlink("loop.jpg", t10 / "loop.jpg")  # a symlink loop
    os.symlink("nowhere.png", t10 / "dangling.png")
    (t10 / "folder.png").mkdir()
    # a class folder with no images
    (data / "train" / "empty").mkdir()
    run = root / "run"
    code, out, err = run_cli("train", data, "--out", run, "--epochs", "1", *FAST)
    return {"code": code, "out": out, "err": err, "run": run, "t1": t1, "t2": t2, "data": data}


def test_awkward_run_trains_and_counts_every_file(awkward_run):
    r = awkward_run
    assert r["code"] == 0, r["err"][-3000:]
    assert "Traceback" not in r["out"] + r["err"]
    assert f"{12 + len(AWKWARD)} train / 6 val images" in r["out"]  # every awkward file is used
    assert f"{len(UNREADABLE) + 1} skipped files" in r["out"]  # + the bomb
    assert load_checkpoint(r["run"] / "last.pt").classes.names == ("1", "2", "10", "empty")
    assert not temp_files(r["run"])


@pytest.mark.parametrize("name", AWKWARD)
def test_valid_but_awkward_images_are_used(awkward_run, name):
    path = awkward_run["t1"] / name
    assert name not in awkward_run["err"]
    assert check_image(path) is None
    if name != "huge.jpg":  # (decoding 81 Mpx adds nothing here; training decoded it)
        img = load_rgb(path)
        assert img.mode == "RGB" and img.size == ((30, 40) if name == "exif.jpg" else (40, 30))
    if name == "deep16.png":
        with Image.open(path) as raw:
            assert raw.mode == "I;16"
        assert np.asarray(load_rgb(path)).std() > 20  # scaled to 8 bits, not clipped to white


def test_exif_orientation_is_applied(awkward_run):
    path = awkward_run["t1"] / "exif.jpg"
    with Image.open(path) as raw:
        assert raw.size == (40, 30)  # stored landscape
    img = np.asarray(load_rgb(path)).astype(int)
    assert img.shape == (40, 30, 3)  # shown portrait: h 40, w 30
    assert img[:12, -12:, 0].mean() > 200 and img[:12, -12:, 1:].mean() < 60  # red moved to the top-right
    assert img[:12, :12, 0].mean() < 60


@pytest.mark.parametrize("name", UNREADABLE)
def test_corrupt_and_empty_files_are_skipped_naming_each(awkward_run, name):
    lines = [line for line in awkward_run["err"].splitlines() if name in line]
    assert len(lines) == 1 and lines[0].startswith("warning: skipping unreadable image"), awkward_run["err"]


def test_decompression_bomb_is_refused_and_named(awkward_run):
    bomb = awkward_run["t2"] / "bomb.png"
    assert bomb.stat().st_size < 100_000  # a real PNG, 100 Mpx, tiny on disk
    with Image.open(bomb) as im:
        assert im.width * im.height > Image.MAX_IMAGE_PIXELS
    lines = [line for line in awkward_run["err"].splitlines() if "bomb.png" in line]
    assert len(lines) == 1 and "too many pixels" in lines[0] and lines[0].startswith("warning:"), awkward_run["err"]


def test_decompression_bomb_refused_in_threads_every_time(tmp_path):
    """Images are checked in a thread pool; the refusal must not depend on thread timing (a
    warnings.catch_warnings() per call, which is process-wide, let some bombs through)."""
    from vr.data.facts import unreadable

    bombs = [write_bomb_png(tmp_path / "bomb0.png")]
    for i in range(1, 24):
        bombs.append(tmp_path / f"bomb{i}.png")
        shutil.copy(bombs[0], bombs[-1])
    small = []
    for i in range(96):
        small.append(tmp_path / f"s{i}.png")
        Image.new("RGB", (8, 8)).save(small[-1])
    for inspect in (False, True, True):  # the second inspect reads the small ones from the cache
        bad = unreadable(bombs + small, inspect=inspect)
        assert sorted(bad) == sorted(bombs)
        assert all("too many pixels" in bad[b] for b in bombs)


@pytest.mark.parametrize("name", IGNORED)
def test_non_image_files_are_ignored(awkward_run, name):
    """Not trained on, not warned about as unreadable; only the data check lists them, as ignored."""
    mentions = [ln for ln in (awkward_run["err"] + awkward_run["out"]).splitlines() if name in ln]
    assert all(ln.startswith("info") and " ignored" in ln for ln in mentions), mentions


def test_empty_class_folder_warns(awkward_run):
    data = awkward_run["data"]
    assert f"warning: class folder {data / 'train' / 'empty'} has no images" in awkward_run["err"]


def test_val_class_missing_from_train_is_an_error_naming_it(tmp_path):
    data = small_dataset(tmp_path / "data", per_class=1)
    (data / "val" / "zebra").mkdir()
    shutil.copy(data / "val" / "1" / "img0.png", data / "val" / "zebra" / "z.png")
    code, out, err = run_cli("train", data, "--out", tmp_path / "run", "--epochs", "1", *FAST)
    one_error(code, out, err, "'zebra'", "train/")
    assert not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.parametrize("where", ["train/run", "val/1/run", ".", "link"])
def test_run_folder_inside_the_data_folder_is_refused_before_anything_is_made(data, tmp_path, where):
    """Issue 15: `vr train DATA --out DATA/train/run` made the run folder a class of its own."""
    before = snapshot(data)
    if where == "link":  # a symlink elsewhere that leads into the data folder
        os.symlink(data / "train", tmp_path / "link")
        out = tmp_path / "link" / "run"
    else:
        out = data / where
    line = one_error(*run_cli("train", data, "--out", out, "--epochs", "1", *FAST), str(data))
    assert "lies inside the data folder" in line or "is the data folder" in line
    assert snapshot(data) == before and not (data / "train" / "run").exists()


def test_train_never_overwrites_its_own_inputs(kit, data, tmp_path):
    """Issue 15: an --init-from checkpoint or a --config file inside --out would be replaced by the
    run's own best.pt / config.yaml."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(kit["ckpt"], run / "best.pt")
    (run / "config.yaml").write_text("# my settings\nepochs: 1\n")
    before = snapshot(run)
    one_error(*run_cli("train", data, "--out", run, "--init-from", run / "best.pt", *FAST),
              "is the --init-from checkpoint", "best.pt")
    one_error(*run_cli("train", data, "--out", run, "--config", run / "config.yaml", *FAST),
              "is the --config file", "config.yaml")
    assert snapshot(run) == before


def test_train_into_an_eval_report_folder_is_refused(kit, data, tmp_path):
    """Issue 15: a folder belongs to the command that wrote it (here `vr eval`)."""
    report = tmp_path / "report"
    code, _, err = run_cli("eval", kit["ckpt"], "--data", kit["val"], "--out", report, "--workers", "0", "--no-html")
    assert code == 0, err
    before = snapshot(report)
    one_error(*run_cli("train", data, "--out", report, "--epochs", "1", *FAST), "is an eval report folder",
              "manifest.json was written by vr eval")
    assert snapshot(report) == before


def _bytes_dataset(root: Path) -> Path:
    """small_dataset with a class folder b"caf\\xe9" and an image b"\\xff\\xfe.png" that are not UTF-8."""
    data = small_dataset(root)
    for split in ("train", "val"):
        os.rename(data / split / "2", non_utf8(data / split, b"caf\xe9"))
        os.rename(data / split / "10" / "img0.png", non_utf8(data / split / "10", b"\xff\xfe.png"))
    return data


def test_names_that_are_not_utf8_train_eval_predict_and_compare(tmp_path):
    """Issue 15: such names crashed `vr train` after its first epoch (best.pt without metrics.csv),
    and (found) `vr eval` in the confusion PNG and report.html, `vr predict`'s table and `vr
    compare`'s plots. Real processes: a terminal or a pipe takes UTF-8 only (no capture here).
    JSON keeps the exact name (\\udcNN escapes, read back as the same path); CSV, markdown, HTML,
    plots and the terminal show it as caf\\xe9."""
    data = _bytes_dataset(tmp_path / "data")
    run = non_utf8(tmp_path, b"r\xfcn")  # the run folder's own name, too
    p = run_vr("train", data, "--out", run, "--epochs", "2", *FAST, cwd=tmp_path, env=STRICT_UTF8)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert len((run / "metrics.csv").read_text().splitlines()) == 3
    assert "caf\\xe9" in (run / "per_class.csv").read_text(encoding="utf-8")
    assert json.loads((run / "classes.json").read_text())[-1] == "caf\udce9"  # exact: the folder's name
    p = run_vr("eval", run / "best.pt", "--data", data, "--out", tmp_path / "rep", "--workers", "0", cwd=tmp_path, env=STRICT_UTF8)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr[-3000:]
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert "caf\udce9" in report["data_classes"] and Path(report["data"], "caf\udce9").is_dir()
    for name in ("report.md", "report.html", "predictions_best.csv", "confusion_best.csv"):
        shown = "caf\\\\xe9" if name == "report.md" else "caf\\xe9"  # markdown escapes the backslash
        assert shown in (tmp_path / "rep" / name).read_text(encoding="utf-8"), name
    p = run_vr("predict", run / "best.pt", data / "val" / "10", cwd=tmp_path, env=STRICT_UTF8)
    assert p.returncode == 0 and "\\xff\\xfe.png" in p.stdout and "caf\\xe9" in p.stdout, p.stderr
    p = run_vr("predict", run / "best.pt", data / "val" / "10", "--json", cwd=tmp_path, env=STRICT_UTF8)
    lines = [json.loads(x) for x in p.stdout.splitlines()]
    assert p.returncode == 0 and any(Path(x["image"]).is_file() and "\udcff" in x["image"] for x in lines)
    p = run_vr("compare", run, "--out", tmp_path / "cmp", cwd=tmp_path, env=STRICT_UTF8)
    assert p.returncode == 0 and "r\\xfcn" in (tmp_path / "cmp" / "compare.csv").read_text(encoding="utf-8"), p.stderr
    p = run_vr("data", "check", data, "--out", tmp_path / "dc.json", cwd=tmp_path, env=STRICT_UTF8)  # found: already fine
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr[-2000:]


def test_pil_warnings_are_one_warning_line_naming_the_image(tmp_path):
    """Issue 15: PIL's own warnings (here: an EXIF tag that claims more bytes than the file has)
    printed Python's two lines, without the `warning:` prefix or the image's name."""
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x010E] = "x" * 50  # ImageDescription
    colour_image(np.random.default_rng(0), (200, 40, 40), (20, 20)).save(buf, "JPEG", exif=exif.tobytes())
    raw = bytearray(buf.getvalue())
    k = raw.index(b"\x01\x0e\x00\x02")  # the tag's IFD entry (big-endian): claim 5000 bytes
    raw[k + 4:k + 8] = (5000).to_bytes(4, "big")
    img = tmp_path / "exif.jpg"
    img.write_bytes(bytes(raw))
    ckpt = H.make_checkpoint(tmp_path / "m.pt", RGB)
    p = run_vr("predict", ckpt, img, cwd=tmp_path, env=ENV)
    assert p.returncode == 0, p.stderr
    lines = [x for x in p.stderr.splitlines() if x.strip() and "· torch" not in x]
    assert lines and all(x.startswith("warning: ") for x in lines), p.stderr
    assert any("exif.jpg" in x and "Skipping tag" in x for x in lines), p.stderr


# =============================================================================================
# 2. Eval
# =============================================================================================
def test_eval_missing_data_folder(kit, tmp_path):
    one_error(*run_cli("eval", kit["ckpt"], "--data", tmp_path / "nope", "--out", tmp_path / "r"),
              "data folder not found", "nope")
    assert not (tmp_path / "r" / "report.json").exists()


@pytest.mark.parametrize("command", ["eval", "submit", "submit --check"])
def test_text_file_renamed_onnx_is_refused_by_the_checker(kit, tmp_path, command):
    fake = tmp_path / "model.onnx"
    fake.write_text("this is not a model\nsecond line\n")
    test = tmp_path / "test"
    test.mkdir()
    H.colour_image(RGB["red"]).save(test / "1.png")
    if command == "eval":
        args = ["eval", fake, "--data", kit["val"], "--out", tmp_path / "r"]
    elif command == "submit":
        args = ["submit", fake, test, "--out", tmp_path / "p.csv"]
    else:
        (tmp_path / "p.csv").write_text("image_name,pred_label\n1,red\n")
        args = ["submit", fake, test, "--check", tmp_path / "p.csv"]
    one_error(*run_cli(*args), "not a valid ONNX model", str(fake))


def test_onnx_graph_failing_the_checker_never_reaches_onnxruntime(kit, tmp_path, monkeypatch):
    """Extra: a well-formed protobuf whose graph is invalid (a node reads an undefined tensor)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Cast", ["undefined_tensor"], ["probs"], to=TensorProto.FLOAT)], "broken",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", "H", "W", 3])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    model.metadata_props.add(key="class_names", value='["red", "green", "blue"]')
    path = tmp_path / "broken.onnx"
    path.write_bytes(model.SerializeToString())  # onnx.save would not check it either
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(str(path))

    def no_session(*a, **k):
        raise AssertionError("ONNX Runtime was handed a model that fails onnx.checker")

    monkeypatch.setattr(ort, "InferenceSession", no_session)
    one_error(*run_cli("eval", path, "--data", kit["val"], "--out", tmp_path / "r", "--workers", "0"),
              "not a valid ONNX model", "broken.onnx")


def test_eval_data_class_the_model_never_saw_is_named(kit, tmp_path):
    data = H.write_image_folder(tmp_path / "d", {**RGB, "purple": H.COLOURS["purple"]}, per_class=1)
    one_error(*run_cli("eval", kit["ckpt"], "--data", data, "--out", tmp_path / "r", "--workers", "0"),
              "'purple'", "best.pt")
    assert not (tmp_path / "r" / "report.json").exists()


def _doctored_checkpoint(src: Path, dst: Path, how: str) -> Path:
    from vr.models.checkpoint import save_checkpoint

    if how == "truncated":
        data = src.read_bytes()
        dst.write_bytes(data[: len(data) // 2])
        return dst
    ck = load_checkpoint(src)
    if how == "other architecture":  # test_resnet weights recorded as a test_efficientnet
        ck.model_name = "test_efficientnet"
    elif how == "renamed keys":
        ck.state_dict = {f"backbone.{k}": v for k, v in ck.state_dict.items()}
    elif how == "class count":  # the head has 3 outputs, the checkpoint claims 4 classes
        ck.num_classes, ck.classes = 4, type(ck.classes)((*ck.classes.names, "extra"))
    save_checkpoint(dst, ck)
    return dst


@pytest.mark.parametrize("how, needle", [
    ("other architecture", "does not match model test_efficientnet"),
    ("renamed keys", "does not match model test_resnet"),
    ("class count", "does not match model test_resnet"),
    ("truncated", "cannot read checkpoint"),  # extra
])
def test_eval_checkpoint_that_does_not_fit_its_architecture(kit, tmp_path, how, needle):
    bad = _doctored_checkpoint(kit["ckpt"], tmp_path / "bad.pt", how)
    one_error(*run_cli("eval", bad, "--data", kit["val"], "--out", tmp_path / "r", "--workers", "0"),
              needle, "bad.pt")
    assert not (tmp_path / "r" / "report.json").exists()


def test_eval_into_a_training_run_folder_is_refused_and_changes_nothing(kit, tmp_path):
    """Issue 15: `vr eval RUN/best.pt --out RUN` replaced the training run's manifest.json. A
    folder belongs to the command that wrote it; the message names the usual place instead."""
    run = fake_run(tmp_path / "run", kit["ckpt"])
    before = snapshot(run)
    one_error(*run_cli("eval", run / "best.pt", "--data", kit["val"], "--out", run, "--workers", "0"),
              "is a training run folder", "manifest.json would be replaced", str(run / "eval"))
    assert snapshot(run) == before
    code, _, err = run_cli("eval", run / "best.pt", "--data", kit["val"], "--out", run / "eval", "--workers", "0",
                           "--no-html")
    assert code == 0, err
    assert {k: v for k, v in snapshot(run).items() if not k.startswith("eval/")} == before


@pytest.mark.parametrize("where", ["class folder", "symlink", "dotdot"])
def test_eval_output_inside_the_data_folder_is_refused(kit, tmp_path, where):
    """Issue 15: `vr eval --out DATA/val/<class>` made the confusion PNG a val image."""
    val = tmp_path / "val"
    shutil.copytree(kit["val"], val)
    before = snapshot(val)
    if where == "class folder":
        out = val / "red"
    elif where == "symlink":
        os.symlink(val, tmp_path / "alias")
        out = tmp_path / "alias" / "report"
    else:
        out = tmp_path / "new" / ".." / "val" / "report"
    one_error(*run_cli("eval", kit["ckpt"], "--data", val, "--out", out, "--workers", "0"),
              "lies inside the data folder", str(val))
    assert snapshot(val) == before and not (tmp_path / "new").exists()


@pytest.mark.parametrize("bad", ["nan.pt", "nan.onnx"])
def test_failed_eval_leaves_the_previous_report_whole(kit, tmp_path, bad):
    """Issue 15: an eval that failed part-way left new per-model files beside the old report. The
    report's files are one unit: here the second model's NaN outputs stop the eval after the
    first model's files were made; every file of the previous report stays byte-identical."""
    out = tmp_path / "r"
    code, _, err = run_cli("eval", kit["ckpt"], "--data", kit["val"], "--out", out, "--workers", "0")
    assert code == 0, err
    before = snapshot(out)
    broken = nan_checkpoint(kit["ckpt"], tmp_path / bad) if bad.endswith(".pt") else nan_graph(tmp_path / bad)
    one_error(*run_cli("eval", kit["ckpt"], broken, "--data", kit["val"], "--out", out, "--workers", "0"),
              "NaN or infinite probabilities", bad, "6 of 6")
    assert snapshot(out) == before and not leftovers(out)


def test_eval_disk_full_while_writing_the_report_keeps_the_previous_one(kit, tmp_path, monkeypatch):
    """Issue 15, injected failure between the writes: the disk fills up at report.json (the last
    file of the unit), after the per-model files, report.md and report.html were written; none of
    the new report appears and the previous one stays whole."""
    import vr.util.io as vio

    out = tmp_path / "r"
    code, _, err = run_cli("eval", kit["ckpt"], "--data", kit["val"], "--out", out, "--workers", "0", "--no-html")
    assert code == 0, err
    before = snapshot(out)
    real = vio.atomic_path

    @contextlib.contextmanager
    def full_at_report_json(path):
        with real(path) as tmp:
            if vio._STAGED.get(Path(path), Path()).name == "report.json":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            yield tmp

    monkeypatch.setattr(vio, "atomic_path", full_at_report_json)
    one_error(*run_cli("eval", kit["ckpt"], kit["ckpt"], "--data", kit["val"], "--out", out, "--workers", "0"),
              "disk is full", str(out / "report.json"))
    assert snapshot(out) == before and not leftovers(out)


def test_kill_9_during_the_commit_of_an_eval_report_is_undone(kit, tmp_path):
    """Issue 15: a kill -9 between the renames of a report's files (here right after the new
    predictions CSV replaced the old one) leaves a journal; the next write into the folder puts
    every previous file back first, so the report is never a mix of two runs."""
    from vr.util.io import recover_interrupted_commits

    out = tmp_path / "r"
    args = ["eval", kit["ckpt"], "--data", kit["val"], "--out", out, "--workers", "0", "--no-html", "--tta", "none"]
    code, _, err = run_cli(*args)
    assert code == 0, err
    before = snapshot(out)
    kill_during_commit(out / "predictions_best.csv", [*args[:-2], "--tta", "flip"], tmp_path / "ready")
    assert snapshot(out)["predictions_best.csv"] != before["predictions_best.csv"]  # half committed ...
    assert list(out.glob(".vr-commit.*.json"))
    assert recover_interrupted_commits(out) == 1  # ... and undone
    assert snapshot(out) == before and not leftovers(out)


def test_eval_report_replaces_the_previous_reports_files(kit, tmp_path):
    """Found: a report for fewer models (or without --html) left the previous report's
    predictions_*.csv, confusion_*.* and report.html beside it, describing other runs. They are
    removed in the same commit; files vr eval did not write stay."""
    out = tmp_path / "r"
    other = tmp_path / "other.pt"
    shutil.copy(kit["ckpt"], other)
    code, _, err = run_cli("eval", kit["ckpt"], other, "--data", kit["val"], "--out", out, "--workers", "0")
    assert code == 0, err
    (out / "notes.txt").write_text("mine")
    assert (out / "predictions_other.csv").exists() and (out / "report.html").exists()
    code, _, err = run_cli("eval", kit["ckpt"], "--data", kit["val"], "--out", out, "--workers", "0", "--no-html")
    assert code == 0, err
    assert sorted(snapshot(out)) == ["confusion_best.csv", "confusion_best.png", "confusion_best_normalized.csv",
                                     "manifest.json", "notes.txt", "predictions_best.csv", "report.json", "report.md"]


def test_eval_over_a_corrupt_previous_report_replaces_it(kit, tmp_path):
    """Found (already fine with the new ownership check): report.json and manifest.json in --out
    that are not JSON are still vr eval's own files, replaced without a traceback."""
    out = tmp_path / "r"
    out.mkdir()
    (out / "report.json").write_bytes(b"\xff\x00 not json")
    (out / "manifest.json").write_text("[1, 2")
    code, _, err = run_cli("eval", kit["ckpt"], "--data", kit["val"], "--out", out, "--workers", "0", "--no-html")
    assert code == 0 and "Traceback" not in err, err
    assert json.loads((out / "report.json").read_text())["n_images"] == 6


@pytest.mark.parametrize("command", ["eval", "submit", "predict", "export"])
@pytest.mark.parametrize("bad", ["nan.pt", "nan.onnx"])
def test_nan_probabilities_stop_with_one_line_naming_the_model(kit, tmp_path, command, bad):
    """Issue 15: a model whose outputs are NaN (diverged weights, a broken export) gave a full
    submission of one class, an eval with a 50% top-5 and a gate that printed inf."""
    if command == "export" and bad.endswith(".onnx"):
        pytest.skip("vr export takes checkpoints")
    model = nan_checkpoint(kit["ckpt"], tmp_path / bad) if bad.endswith(".pt") else nan_graph(tmp_path / bad)
    test = write_test_folder(tmp_path / "test")
    args = {"eval": ["eval", model, "--data", kit["val"], "--out", tmp_path / "r", "--workers", "0"],
            "submit": ["submit", model, test, "--out", tmp_path / "p.csv", "--workers", "0"],
            "predict": ["predict", model, test],
            "export": ["export", model, "--out", tmp_path / "m.onnx", "--verify", kit["val"]]}[command]
    n = {"eval": 6, "export": 6}.get(command, 3)
    one_error(*run_cli(*args), str(model), "NaN or infinite probabilities", f"for {n} of {n} image(s)")
    assert not (tmp_path / "r" / "report.json").exists() and not (tmp_path / "p.csv").exists()
    assert not (tmp_path / "m.onnx").exists() and not leftovers(tmp_path)


def test_a_model_path_with_rich_markup_is_printed_as_is(kit, tmp_path):
    """Found: a model path holding "[/x]" crashed `vr submit` and `vr eval` with rich's
    MarkupError (a traceback) when the line naming the model was printed."""
    (tmp_path / "a[").mkdir()
    model = tmp_path / "a[" / "x]b.pt"
    shutil.copy(kit["ckpt"], model)
    code, out, err = run_cli("submit", model, write_test_folder(tmp_path / "test"), "--out", tmp_path / "p.csv",
                             "--workers", "0")
    assert code == 0 and "Traceback" not in err and str(model) in out.replace("\n", ""), err
    code, out, err = run_cli("eval", model, "--data", kit["val"], "--out", tmp_path / "r", "--workers", "0", "--no-html")
    assert code == 0 and "Traceback" not in err, err


# =============================================================================================
# 3. Submit
# =============================================================================================
def write_test_folder(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    names = list(RGB)
    for i in range(1, n + 1):
        H.colour_image(RGB[names[i % 3]], H.SIZES[i % 4], seed=i).save(folder / f"{i}.png")
    return folder


def test_submit_empty_test_folder(kit, tmp_path):
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "readme.txt").write_text("no images here")
    one_error(*run_cli("submit", kit["ckpt"], tmp_path / "test", "--out", tmp_path / "p.csv"), "holds no images")
    assert not (tmp_path / "p.csv").exists()


def test_submit_two_files_with_one_stem(kit, tmp_path):
    test = write_test_folder(tmp_path / "test")
    H.colour_image(RGB["red"]).save(test / "a.jpg")
    H.colour_image(RGB["red"]).save(test / "a.png")
    one_error(*run_cli("submit", kit["ckpt"], test, "--out", tmp_path / "p.csv"), "a.jpg and a.png")
    assert not (tmp_path / "p.csv").exists()


def test_submit_corrupt_test_image_is_named(kit, tmp_path):
    test = write_test_folder(tmp_path / "test")
    truncated_jpeg(test / "broken.jpg")
    out = tmp_path / "p.csv"
    out.write_text("previous\n")
    one_error(*run_cli("submit", kit["ckpt"], test, "--out", out), "unreadable", "broken.jpg")
    assert out.read_text() == "previous\n" and not temp_files(tmp_path)


def _read_only_submit(args: list, ro: Path) -> tuple[int, str, str]:
    """`vr submit ARGS` in a fresh process that cannot write into ``ro``: chmod 0555 for a normal
    user; as root (who writes anywhere) inside a private mount namespace where ``ro`` is bound
    read-only, a real read-only file system."""
    import shlex
    import subprocess

    cmd = [sys.executable, "-m", "vr.cli", "submit", *map(str, args)]
    if os.geteuid() != 0:
        ro.chmod(0o555)
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        finally:
            ro.chmod(0o755)
        return p.returncode, p.stdout, p.stderr
    mount = (f"mount --bind {shlex.quote(str(ro))} {shlex.quote(str(ro))} && "
             f"mount -o remount,bind,ro {shlex.quote(str(ro))}")
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                            f"{mount} && ! touch {shlex.quote(str(ro / '.probe'))} 2>/dev/null"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("running as root without a way to mount a read-only folder (unshare --mount failed)")
    p = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                        f"{mount} && exec {' '.join(shlex.quote(c) for c in cmd)}"], capture_output=True, text=True,
                       timeout=300)
    return p.returncode, p.stdout, p.stderr


@pytest.mark.parametrize("case", ["parent is a file", "output is a folder", "read-only folder"])
def test_submit_unwritable_output_path(kit, tmp_path, case):
    test = write_test_folder(tmp_path / "test", n=2)
    if case == "read-only folder":
        ro = tmp_path / "ro"
        ro.mkdir()
        out = ro / "p.csv"
        out.write_text("previous\n")
        line = one_error(*_read_only_submit([kit["ckpt"], test, "--out", out, "--workers", "0"], ro), "p.csv")
        assert f"cannot write {out}: folder {ro} is not writable" in line
        assert out.read_text() == "previous\n" and not temp_files(tmp_path)
        return
    if case == "parent is a file":
        (tmp_path / "afile").write_text("x")
        out, needle = tmp_path / "afile" / "p.csv", "cannot write"
    else:
        (tmp_path / "adir").mkdir()
        out, needle = tmp_path / "adir", "it is a folder"
    line = one_error(*run_cli("submit", kit["ckpt"], test, "--out", out, "--workers", "0"), needle)
    assert str(out) in line or case == "output is a folder"


# A `vr submit` that stops where the test wants it: in the model (phase "predict") or halfway
# through writing the CSV (phase "write"), after touching READY; then it sleeps until signalled.
SUBMIT_HELPER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    phase, ready = sys.argv[1], Path(sys.argv[2])
    if phase == "predict":
        from vr.runtime.torch_backend import TorchPredictor
        def run(self, prepared):
            ready.touch()
            time.sleep(120)
        TorchPredictor.run = run
    else:  # the CSV is written into the temporary file of its atomic_group: stop with half of it there
        import vr.util.io as vio
        real = vio.AtomicGroup.commit
        def commit(self):
            for e in self.entries:
                if e["tmp"] is not None and e["target"].endswith(".csv"):
                    data = Path(e["tmp"]).read_bytes()
                    Path(e["tmp"]).write_bytes(data[: len(data) // 2])
                    ready.touch()
                    time.sleep(120)
            return real(self)
        vio.AtomicGroup.commit = commit
    from vr.cli import main
    sys.exit(main(sys.argv[3:]))
""")


@pytest.mark.parametrize("phase, sig", [("predict", signal.SIGINT), ("write", signal.SIGINT),
                                        ("write", signal.SIGKILL)])
def test_interrupted_submit_leaves_the_previous_csv_byte_identical(kit, tmp_path, phase, sig):
    test = write_test_folder(tmp_path / "test", n=3)
    out = tmp_path / "sub" / "prediction.csv"
    args = ["submit", str(kit["ckpt"]), str(test), "--out", str(out), "--workers", "0", "--device", "cpu"]
    code, _, err = run_cli(*args)
    assert code == 0, err
    before = out.read_bytes()
    write_test_folder(test, n=6)  # a finished run would now write 6 rows
    ready = tmp_path / "ready"
    p = subprocess.Popen([sys.executable, "-c", SUBMIT_HELPER, phase, str(ready), *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline, "the submit never reached the point to interrupt"
            time.sleep(0.02)
        p.send_signal(sig)
        stdout, stderr = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert out.read_bytes() == before
    if sig == signal.SIGINT:
        assert p.returncode == 130, stderr
        assert "Traceback" not in stdout + stderr and stderr.strip().splitlines()[-1] == "interrupted"
        assert not temp_files(tmp_path)  # the half-written temporary file is removed
    else:
        assert p.returncode == -signal.SIGKILL
        # nothing can clean up at kill -9: the half-written CSV stays, beside the intact one ...
        half = temp_files(out.parent)
        assert len(half) == 1 and half[0].read_bytes() != before and half[0].name.startswith(".prediction.csv.")
        # ... until the next successful write of that file removes it (its writer's PID is gone)
        code, _, err = run_cli(*args)
        assert code == 0, err
        assert len(out.read_text().splitlines()) == 7 and not temp_files(out.parent)


@pytest.mark.parametrize("case", ["the checkpoint", "an onnx model", "a test image", "a new file in the test folder",
                                  "the zip is the CSV", "a symlink to the model", "the model spelled with ..",
                                  "a training run's metrics.csv", "the --config file"])
def test_submit_output_that_would_destroy_an_input_is_refused(kit, tmp_path, case):
    """Issue 15: `vr submit MODEL.pt --test-dir T --out MODEL.pt` exited 0 and replaced the
    checkpoint with a CSV (the same for an .onnx and for a file in the test folder). Found:
    `--out p.zip --zip` wrote the zip and then the CSV over it."""
    test = write_test_folder(tmp_path / "test")
    model = tmp_path / "m.pt"
    shutil.copy(kit["ckpt"], model)
    extra, needle = [], "is the model"
    if case == "the checkpoint":
        out = model
    elif case == "an onnx model":
        model = out = H.make_onnx(tmp_path / "m.onnx", RGB)
    elif case == "a test image":
        out, needle = test / "1.png", "inside the test folder"
    elif case == "a new file in the test folder":
        out, needle = test / "prediction.csv", "inside the test folder"
    elif case == "the zip is the CSV":
        out, extra, needle = tmp_path / "p.zip", ["--zip"], "are the same file"
    elif case == "a symlink to the model":
        out = tmp_path / "p.csv"
        os.symlink(model, out)
    elif case == "the model spelled with ..":
        out = tmp_path / "test" / ".." / "m.pt"
    elif case == "a training run's metrics.csv":
        out, needle = fake_run(tmp_path / "run", kit["ckpt"]) / "metrics.csv", "is a file of the training run"
    else:
        (tmp_path / "c.yaml").write_text("batch_size: 4\n")
        out, extra, needle = tmp_path / "c.yaml", ["--config", tmp_path / "c.yaml"], "is the --config file"
    before = snapshot(tmp_path)
    one_error(*run_cli("submit", model, test, "--out", out, "--workers", "0", *extra), needle)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("failing", ["prediction.csv", "prediction.zip"])
def test_submit_zip_and_csv_commit_together_when_one_write_fails(kit, tmp_path, monkeypatch, failing):
    """Issue 15: the zip was written before the CSV, so a failed CSV write left the zip (the file
    people upload) holding the new run while the message said the previous submission was
    intact. Now a full disk while writing either file leaves both previous files byte-identical."""
    import zipfile

    test = write_test_folder(tmp_path / "test")
    out = tmp_path / "sub" / "prediction.csv"
    args = ["submit", kit["ckpt"], test, "--out", out, "--zip", "--workers", "0"]
    code, _, err = run_cli(*args)
    assert code == 0, err
    before = snapshot(out.parent)
    write_test_folder(test, n=6)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if failing == "prediction.zip":
        monkeypatch.setattr(zipfile.ZipFile, "writestr", full)
    else:
        real = Path.write_bytes
        monkeypatch.setattr(Path, "write_bytes", lambda self, data: full() if self.name.startswith(".prediction.csv.")
                            else real(self, data))
    one_error(*run_cli(*args), "disk is full", failing, "intact")
    assert snapshot(out.parent) == before and not leftovers(out.parent)


@pytest.mark.parametrize("then", ["recover", "submit again"])
def test_kill_9_between_the_csv_and_zip_renames(kit, tmp_path, then):
    """Issue 15: kill -9 in the commit of a submission, after the new CSV is in place and before
    the zip is: the zip (the upload) is never newer than the CSV, and the journal left behind
    lets the next write into the folder put the previous pair back before it writes its own."""
    import zipfile

    from vr.util.io import recover_interrupted_commits

    test = write_test_folder(tmp_path / "test")
    out = tmp_path / "sub" / "prediction.csv"
    args = ["submit", kit["ckpt"], test, "--out", out, "--zip", "--workers", "0", "--device", "cpu"]
    code, _, err = run_cli(*args)
    assert code == 0, err
    before = snapshot(out.parent)
    write_test_folder(test, n=6)
    kill_during_commit(out, args, tmp_path / "ready")
    assert len(out.read_text().splitlines()) == 7  # the CSV is the new one ...
    assert out.with_suffix(".zip").read_bytes() == before["prediction.zip"]  # ... the zip not yet
    if then == "recover":
        assert recover_interrupted_commits(out.parent) == 1
        assert snapshot(out.parent) == before and not leftovers(out.parent)
    else:
        code, _, err = run_cli(*args)
        assert code == 0, err
        assert not leftovers(out.parent)
        with zipfile.ZipFile(out.with_suffix(".zip")) as zf:
            assert zf.read("prediction.csv") == out.read_bytes() and len(out.read_text().splitlines()) == 7


def test_ctrl_c_during_the_commit_keeps_the_previous_submission(kit, tmp_path):
    """Found: Ctrl-C arriving between the renames of a commit would split the pair; it waits
    for the renames, then undoes them, and the command stops as interrupted."""
    test = write_test_folder(tmp_path / "test")
    out = tmp_path / "sub" / "prediction.csv"
    args = ["submit", str(kit["ckpt"]), str(test), "--out", str(out), "--zip", "--workers", "0", "--device", "cpu"]
    code, _, err = run_cli(*args)
    assert code == 0, err
    before = snapshot(out.parent)
    write_test_folder(test, n=6)
    helper = textwrap.dedent("""
        import os, signal, sys
        real = os.replace
        def replace(src, dst, *a, **k):
            real(src, dst, *a, **k)
            if str(dst) == sys.argv[1]:
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C right after the CSV's rename
        os.replace = replace
        from vr.cli import main
        sys.exit(main(sys.argv[2:]))
    """)
    p = subprocess.run([sys.executable, "-c", helper, str(out), *args], capture_output=True, text=True, env=ENV,
                       timeout=300)
    assert p.returncode == 130 and p.stderr.strip().splitlines()[-1] == "interrupted", p.stderr
    assert snapshot(out.parent) == before and not leftovers(out.parent)


def test_submit_test_image_whose_name_is_not_utf8_is_one_error_naming_it(kit, tmp_path):
    """Issue 15: such a name crashed `vr submit` with a UnicodeEncodeError when the CSV was
    written, after the whole prediction. The CSV gets every image_name exactly as the file
    system has it; a name that is not UTF-8 cannot be UTF-8 text, so it is refused up front,
    naming the file, and the previous CSV stays."""
    test = write_test_folder(tmp_path / "test")
    shutil.copy(test / "1.png", non_utf8(test, b"caf\xe9.png"))
    out = tmp_path / "p.csv"
    out.write_text("previous\n")
    one_error(*run_cli("submit", kit["ckpt"], test, "--out", out, "--workers", "0"),
              "not valid UTF-8", "caf\\xe9.png", "rename")
    one_error(*run_cli("submit", kit["ckpt"], test, "--check", out), "not valid UTF-8", "caf\\xe9.png")
    assert out.read_text() == "previous\n" and not leftovers(tmp_path)


def test_submit_with_a_model_whose_class_name_is_not_utf8(kit, tmp_path):
    """Issue 15: a class trained from a folder named b"caf\\xe9" cannot be a label of a UTF-8 CSV:
    refused before predicting, naming it."""
    from vr.models.checkpoint import save_checkpoint

    ck = load_checkpoint(kit["ckpt"])
    ck.classes = type(ck.classes)(("red", "caf\udce9", "blue"))
    save_checkpoint(tmp_path / "m.pt", ck)
    one_error(*run_cli("submit", tmp_path / "m.pt", write_test_folder(tmp_path / "test"), "--out", tmp_path / "p.csv"),
              "class name(s) that are not valid UTF-8", "caf\\xe9")
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("weights, needle", [
    ("0,1", "positive"), ("-1,2", "positive"), ("inf,1", "positive"), ("nan,1", "positive"), ("1e308,1e308", None),
])
def test_ensemble_weights_are_refused_or_normalised_safely(kit, tmp_path, weights, needle):
    """Issue 15: weights that overflow when summed (1e308,1e308) were a ZeroDivisionError
    traceback; zero, negative, infinite and NaN weights are one line."""
    test = write_test_folder(tmp_path / "test")
    other = tmp_path / "b.pt"
    shutil.copy(kit["ckpt"], other)
    args = ["submit", kit["ckpt"], other, test, "--weights", weights, "--out", tmp_path / "p.csv", "--workers", "0"]
    if needle is not None:
        one_error(*run_cli(*args), "weights must be positive", needle)
        a, b = weights.split(",")
        one_error(*run_cli("eval", f"{kit['ckpt']}@{a}+{other}@{b}", "--data", kit["val"], "--out", tmp_path / "r"),
                  "weights must be positive")
        return
    code, out, err = run_cli(*args)
    assert code == 0, err
    assert "(weight 0.5)" in out
    code, _, err = run_cli("eval", f"{kit['ckpt']}@1e308+{other}@1e308", "--data", kit["val"], "--out",
                           tmp_path / "r", "--workers", "0", "--no-html")
    assert code == 0, err


def test_submit_names_with_commas_quotes_and_newlines_round_trip(kit, tmp_path):
    """Found (already fine): image names that CSV must quote are written quoted and read back by
    --check; the CSV holds them exactly."""
    import csv as _csv

    test = tmp_path / "test"
    test.mkdir()
    names = ['a,b', 'say "hi"', "two\nlines", " spaced "]
    for i, n in enumerate(names):
        H.colour_image(RGB["red"], seed=i).save(test / f"{n}.png")
    out = tmp_path / "p.csv"
    code, _, err = run_cli("submit", kit["ckpt"], test, "--out", out, "--workers", "0")
    assert code == 0, err
    rows = list(_csv.reader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert sorted(r[0] for r in rows[1:]) == sorted(names)
    code, out_, err = run_cli("submit", kit["ckpt"], test, "--check", out)
    assert code == 0 and "valid submission" in out_, err


def test_check_of_a_large_submission_is_fast(kit, tmp_path):
    """Found: --check compared every CSV row against a set of the test names rebuilt per row,
    quadratic in the number of images (minutes for 20k). The check lists names only, so empty
    .png files stand in for the images."""
    test = tmp_path / "test"
    test.mkdir()
    n = 20_000
    for i in range(n):
        (test / f"{i}.png").touch()
    csv_path = tmp_path / "p.csv"
    csv_path.write_text("image_name,pred_label\n" + "".join(f"{i},red\n" for i in range(n)) + "extra,red\n")
    t = time.monotonic()
    one_error(*run_cli("submit", kit["ckpt"], test, "--check", csv_path), "1 name(s) not in", "extra")
    assert time.monotonic() - t < 10


# =============================================================================================
# 4. Arguments
# =============================================================================================
@pytest.mark.parametrize("args, needle", [
    (["--epochs", "0"], "--epochs must be positive"),
    (["--epochs", "-2"], "--epochs must be positive"),
    (["--epochs", "two"], "'--epochs'"),
    (["--lr", "-0.1"], "--lr must be positive"),
    (["--lr", "0"], "--lr must be positive"),
    (["--model", "resnet_does_not_exist"], "unknown model 'resnet_does_not_exist'"),
    (["--opt", "adam"], "'adam' is not one of 'adamw', 'sgd'"),
    (["--sched", "linear"], "'linear' is not one of"),
    (["yaml:opt: adam"], "unknown optimizer 'adam'"),
    (["yaml:sched: linear"], "unknown scheduler 'linear'"),
    (["--img-size", "4"], "--img-size must be in [8, 4096]"),
    (["--bogus-flag"], "No such option: --bogus-flag"),
])
def test_bad_train_arguments_are_one_line(data, tmp_path, args, needle):
    if args[0].startswith("yaml:"):
        (tmp_path / "c.yaml").write_text(args[0][5:] + "\n")
        args = ["--config", tmp_path / "c.yaml"]
    t = time.monotonic()
    one_error(*run_cli("train", data, "--out", tmp_path / "run", *FAST, *args), needle)
    assert not (tmp_path / "run" / "last.pt").exists() and time.monotonic() - t < 30


@pytest.mark.parametrize("command", ["eval", "submit"])
def test_unknown_tta_is_one_line(kit, tmp_path, command):
    if command == "eval":
        args = ["eval", kit["ckpt"], "--data", kit["val"], "--out", tmp_path / "r"]
    else:
        args = ["submit", kit["ckpt"], write_test_folder(tmp_path / "test"), "--out", tmp_path / "p.csv"]
    one_error(*run_cli(*args, "--tta", "mirror"), "'mirror' is not one of 'none', 'flip', 'five-crop', 'ten-crop'")


@pytest.mark.parametrize("model, size", [
    ("vit_tiny_patch16_224", 64),  # a ViT with a fixed input size (224)
    ("test_vit", 50),  # a ViT with dynamic size: 50 is not a multiple of its 16-pixel patches
])
def test_image_size_the_model_cannot_take_is_refused_before_training(data, tmp_path, model, size):
    run = tmp_path / "run"
    line = one_error(*run_cli("train", data, "--out", run, *FAST, "--model", model, "--img-size", size,
                              "--epochs", "1"), f"model {model} cannot take {size}x{size} images")
    assert len(line) < 400
    assert not (run / "last.pt").exists() and not (run / "metrics.csv").exists()


ANCHORS = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n" + "".join(
    f"{k}: &{k} [{', '.join([f'*{p}'] * 9)}]\n" for p, k in zip("bcd", "cde")) + "model: *e\n"


@pytest.mark.parametrize("yaml_bytes, needle", [
    (ANCHORS.encode(), "more than 32 aliases"),  # 9^5 model names from 200 bytes of anchors
    (b"sched: &s [cosine, step]\nopt: *s\n", "sched: cannot read ['cosine', 'step'] as text"),
    (b"epochs: '1.5'\n", "epochs: cannot read '1.5' as a whole number"),
    (b"epochs: 1.5\n", "epochs: cannot read 1.5 as a whole number"),
    (b"epochs: true\n", "epochs: cannot read True as a whole number (YAML reads yes/no"),
    (b"mean: [0.5, 0.5]\n", "mean: cannot read [0.5, 0.5] as 3 values"),
    (b"label_smoothing: .nan\n", "label_smoothing: cannot read nan as a finite number"),
    (b"epochs: ~\n", "epochs: needs a whole number, got an empty value (null)"),  # found: a TypeError traceback
    (b"init_from: \"a\\0b\"\n", "init_from: cannot read 'a\\x00b' as a path"),  # found: "not found: a<NUL>b"
    ("model: caf\xe9\n".encode("latin-1"), "is not UTF-8 text (byte 0xe9 at offset 10)"),
    (b"# " + b"x" * 1_100_000 + b"\n", "is over 1 MB"),
    (b"model: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nests too deeply"),
    (b"batch-size: 8\nbatch_size: 16\n", "sets batch_size twice"),  # found: one of them silently won
    (b"epochs: 1\nepochs: 5\n", "key 'epochs' is given twice"),  # found: the last one silently won
    (b"x" * 1000 + b": 1\n", "unknown config key(s) xxxx"),
    (b"- epochs\n- 5\n", "must hold a mapping"),
])
def test_bad_yaml_values_are_one_short_line(data, tmp_path, yaml_bytes, needle):
    """Issue 15: a YAML value of the wrong shape in a valid key was accepted and expanded (minutes
    of CPU, hundreds of MB of error text); a non-UTF-8 file was a traceback. Values are checked by
    type before use, and an error echoes at most 80 characters of a value."""
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(yaml_bytes)
    t = time.monotonic()
    line = one_error(*run_cli("train", data, "--out", tmp_path / "run", *FAST, "--config", cfg), needle)
    assert len(line) < 300 and time.monotonic() - t < 15
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["eval", "submit"])
def test_a_yaml_boolean_where_text_belongs_names_the_yaml_rule(kit, tmp_path, command):
    """Found: `tta: off` is the boolean False in YAML; it was read as the text 'False' and refused
    as an unknown TTA mode, which hid the cause."""
    (tmp_path / "c.yaml").write_text("tta: off\n")
    args = (["eval", kit["ckpt"], "--data", kit["val"], "--out", tmp_path / "r"] if command == "eval"
            else ["submit", kit["ckpt"], write_test_folder(tmp_path / "test"), "--out", tmp_path / "p.csv"])
    one_error(*run_cli(*args, "--config", tmp_path / "c.yaml"), "tta: cannot read False as text", "quote it")


@pytest.mark.parametrize("case", ["--config is a folder", "the test folder is a file", "--data is a file"])
def test_a_file_where_a_folder_belongs_and_back_is_named_as_such(kit, tmp_path, case):
    """Found: each of these said "not found" about a path that exists."""
    test = write_test_folder(tmp_path / "test")
    if case == "--config is a folder":
        args, needle = ["submit", kit["ckpt"], test, "--config", tmp_path], "is a folder; give a YAML file"
    elif case == "the test folder is a file":
        args, needle = ["submit", kit["ckpt"], test / "1.png", "--out", tmp_path / "p.csv"], "1.png is a file"
    else:
        args, needle = ["eval", kit["ckpt"], "--data", test / "1.png", "--out", tmp_path / "r"], "1.png is a file"
    one_error(*run_cli(*args), needle)


def test_long_output_names(kit, tmp_path):
    """Issue 15: a CSV name of 236-255 bytes fits the file system, but its temporary name did not
    (".NAME.PID.XXXXXXXX.tmp"), and the error blamed the name; a name really over the limit says so."""
    test = write_test_folder(tmp_path / "test", n=2)
    ok = tmp_path / ("x" * 246 + ".csv")  # 250 bytes
    code, _, err = run_cli("submit", kit["ckpt"], test, "--out", ok, "--workers", "0")
    assert code == 0 and ok.is_file(), err
    code, _, err = run_cli("submit", kit["ckpt"], test, "--out", ok, "--workers", "0")  # and again, over it
    assert code == 0 and not leftovers(tmp_path), err
    too_long = tmp_path / ("y" * 296 + ".csv")
    one_error(*run_cli("submit", kit["ckpt"], test, "--out", too_long, "--workers", "0"),
              "its name is 300 bytes, over this file system's limit of 255")


@pytest.mark.parametrize("command", ["export", "data check", "compare", "sweep"])
def test_outputs_of_the_other_commands_are_guarded_too(kit, data, tmp_path, command):
    """Issue 15: one output guard for every command: export never writes into a folder it reads
    images from (--verify, the checkpoint's data), data check never into its data, compare never
    over a run folder or into an eval report, sweep never inside the data."""
    if command == "export":
        from vr.models.checkpoint import save_checkpoint

        ck = load_checkpoint(kit["ckpt"])
        ck.config = {"data": str(tmp_path / "ds")}
        shutil.copytree(kit["val"], tmp_path / "ds" / "val")
        save_checkpoint(tmp_path / "m.pt", ck)
        cases = [(["export", tmp_path / "m.pt", "--out", tmp_path / "ds" / "val" / "red" / "m.onnx"],
                  "lies inside the data folder of"),
                 (["export", kit["ckpt"], "--out", kit["val"] / "m.onnx", "--verify", kit["val"]],
                  "lies inside the --verify folder")]
    elif command == "data check":
        run = fake_run(tmp_path / "run", kit["ckpt"])
        cases = [(["data", "check", data, "--out", data / "val" / "check.json"], "lies inside the data folder"),
                 (["data", "check", data, "--out", run / "manifest.json"], "is a file of the training run")]
    elif command == "compare":
        run = fake_run(tmp_path / "run", kit["ckpt"])
        code, _, err = run_cli("eval", run / "best.pt", "--data", kit["val"], "--out", run / "eval", "--workers", "0",
                               "--no-html")
        assert code == 0, err
        cases = [(["compare", run, "--out", run], "is the run folder"),
                 (["compare", run, "--out", run / "eval"], "is an eval report folder")]
    else:
        (tmp_path / "sweep.yaml").write_text(f"data: {data}\nepochs: 1\n")
        cases = [(["sweep", tmp_path / "sweep.yaml", "--set", "lr=0.1,0.2", "--out", data / "sweep"],
                  "lies inside the data folder")]
    for args, needle in cases:
        before = snapshot(tmp_path), snapshot(data)
        one_error(*run_cli(*args), needle)
        assert (snapshot(tmp_path), snapshot(data)) == before, args


# =============================================================================================
# 5. Untrusted files
# =============================================================================================
class Payload:
    """Unpickling this creates the marker file: proof that the pickle ran code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def evil(kit, tmp_path):
    marker = tmp_path / "PWNED"
    ck = load_checkpoint(kit["ckpt"])
    d = ck.to_dict()
    d["config"] = {"note": Payload(marker)}
    path = tmp_path / "evil.pt"
    torch.save(d, path)
    # the payload is live: an unsafe load runs it
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()
    return path, marker


@pytest.mark.parametrize("command", ["eval", "submit", "export", "train --resume", "train --pretrained"])
def test_pickled_payload_checkpoint_is_refused_without_running(evil, kit, data, tmp_path, command):
    path, marker = evil
    if command == "eval":
        args = ["eval", path, "--data", kit["val"], "--out", tmp_path / "r"]
    elif command == "submit":
        args = ["submit", path, write_test_folder(tmp_path / "test"), "--out", tmp_path / "p.csv"]
    elif command == "export":
        args = ["export", path, "--out", tmp_path / "m.onnx"]
    elif command == "train --resume":
        run = tmp_path / "run"
        run.mkdir()
        shutil.copy(path, run / "last.pt")
        path = run / "last.pt"
        args = ["train", data, "--out", run, "--resume", *FAST]
    else:
        args = ["train", data, "--out", tmp_path / "run", "--pretrained", path, *FAST]
    one_error(*run_cli(*args), "refusing to load", str(path), "weights_only")
    assert not marker.exists()
    assert not (tmp_path / "m.onnx").exists()


def _torch_load_calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            if name == "load" and owner in ("torch", "") or name in ("_load", "load_state_dict_from_url"):
                yield node


def test_source_never_unpickles_without_weights_only():
    files = sorted((REPO / "vr").rglob("*.py"))
    assert len(files) > 20
    calls = 0
    for f in files:
        text = f.read_text()
        assert "weights_only=False" not in text.replace(" ", ""), f
        for banned in ("pickle.load(", "pickle.loads(", "torch.jit.load(", "allow_pickle=True", "dill.", "joblib.load("):
            assert banned not in text, (f, banned)
        for call in _torch_load_calls(ast.parse(text, str(f))):
            calls += 1
            kw = {k.arg: k.value for k in call.keywords}
            assert isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True, \
                f"{f}:{call.lineno}: torch.load without weights_only=True"
    assert calls >= 1  # the scan sees the one real call (vr.models.checkpoint.safe_torch_load)


def test_every_onnx_model_is_checked_before_onnxruntime_sees_it(kit, monkeypatch):
    """A user's .onnx goes through onnx.checker before ONNX Runtime, on every path that opens one
    (behaviour on a real invalid graph: test_onnx_graph_failing_the_checker_never_reaches_onnxruntime);
    and ONNX Runtime sessions are made in one module only, the runtime layer's ONNX backend."""
    import onnx
    import onnxruntime as ort

    from vr.runtime.load import load_predictor, model_classes

    def refuse(*a, **k):
        raise onnx.checker.ValidationError("planted: the checker refuses this graph")

    graph = H.make_onnx(kit["dir"] / "checked.onnx", RGB)
    monkeypatch.setattr(onnx.checker, "check_model", refuse)
    monkeypatch.setattr(ort, "InferenceSession", lambda *a, **k: pytest.fail("ONNX Runtime saw an unchecked graph"))
    for fn in (load_predictor, model_classes):
        with pytest.raises(VrError, match="planted: the checker refuses"):
            fn(graph)
    sessions = {f.relative_to(REPO).as_posix() for f in (REPO / "vr").rglob("*.py") if "InferenceSession(" in f.read_text()}
    assert sessions == {"vr/runtime/onnxruntime_backend.py"}, sessions


# =============================================================================================
# 6. Crashes
# =============================================================================================
def test_ctrl_c_during_training_saves_last_pt_and_the_printed_resume_works(data, tmp_path):
    import shlex

    run = tmp_path / "run"
    # 1000 epochs: the run is certainly still going when SIGINT comes; resumed below to epoch done+1
    code, out, err = signal_after_first_epoch(["train", data, "--out", run, "--epochs", "1000", *FAST], run,
                                              signal.SIGINT)
    assert code == 130, out[-2000:] + err[-2000:]
    assert "Traceback" not in out + err and err.strip() == "", err
    last_line = out.rstrip().splitlines()[-1]
    assert last_line.startswith("interrupted") and "Resume with: vr train" in last_line
    done = load_checkpoint(run / "last.pt").epoch
    assert done >= 1 and f"holds epoch {done}" in last_line
    assert not temp_files(run)

    resume = shlex.split(last_line.split("Resume with: ", 1)[1])
    assert resume[0] == "vr"
    code, out, err = run_cli(*resume[1:], "--epochs", done + 1)
    assert code == 0, err[-3000:]
    assert f"resuming {run} after epoch {done}" in out
    assert load_checkpoint(run / "last.pt").epoch == done + 1


def _nan_after(model, n_training_forwards: int) -> None:
    """The model's logits turn NaN after this many training-mode forwards (the loss then is NaN;
    eval-mode forwards are left alone)."""
    seen = {"n": 0}

    def hook(module, inputs, output):
        if module.training:
            seen["n"] += 1
            if seen["n"] > n_training_forwards:
                return output * float("nan")
        return output

    model.register_forward_hook(hook)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(data, tmp_path):
    from conftest import train_parts

    from vr.train.fit import fit

    run = tmp_path / "run"
    parts = train_parts(data, "--out", run, "--epochs", "3", *FAST)
    _nan_after(parts.raw, 1)  # 12 images, batch 8: one step per epoch
    with pytest.raises(VrError) as e:
        fit(parts)
    line = str(e.value)
    assert "loss became nan or inf at epoch 2" in line and "keeps epoch 1" in line and "--lr" in line
    assert str(run / "last.pt") in line and "\n" not in line
    last = load_checkpoint(run / "last.pt")
    assert last.epoch == 1
    assert all(torch.isfinite(v).all() for v in last.state_dict.values() if v.is_floating_point())
    assert load_checkpoint(run / "best.pt").epoch == 1
    assert (run / "metrics.csv").read_text().strip().splitlines()[-1].startswith("1,")
    assert not temp_files(run)


def test_weights_that_diverge_at_the_end_of_an_epoch_are_not_saved_as_good(data, tmp_path):
    """lr 1e30 with one step per epoch: that step's loss is finite but the weights it leaves
    give a NaN val loss. Such an epoch must not become last.pt / best.pt ("the last good one")."""
    run = tmp_path / "run"
    one_error(*run_cli("train", data, "--out", run, "--epochs", "3", *FAST, "--lr", "1e30"),
              "nan or inf at epoch 1", "no checkpoint")
    assert not (run / "last.pt").exists() and not (run / "best.pt").exists()


def test_disk_full_while_writing_a_checkpoint_keeps_the_previous_one(data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    real_save = torch.save
    saves = {"last": 0}

    class FullDisk(io.RawIOBase):
        """A file that takes `room` bytes, then fails like a full disk."""

        def __init__(self, f, room):
            self.f, self.room = f, room

        def writable(self):
            return True

        def write(self, b):
            b = bytes(b)
            if len(b) > self.room:
                self.f.write(b[: self.room])
                self.f.flush()
                self.room = 0
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.room -= len(b)
            return self.f.write(b)

    def save(obj, f, *a, **k):
        name = Path(getattr(f, "name", f)).name
        if name.startswith(".last.pt."):
            saves["last"] += 1
            if saves["last"] == 2:  # epoch 2's last.pt: write half of it, then the disk is full
                size = len(_serialised(obj))
                with contextlib.ExitStack() as stack:
                    target = f if hasattr(f, "write") else stack.enter_context(open(f, "wb"))
                    return real_save(obj, FullDisk(target, size // 2), *a, **k)
        return real_save(obj, f, *a, **k)

    def _serialised(obj):
        buf = io.BytesIO()
        real_save(obj, buf)
        return buf.getvalue()

    monkeypatch.setattr(torch, "save", save)
    line = one_error(*run_cli("train", data, "--out", run, "--epochs", "3", *FAST), "disk is full",
                     str(run / "last.pt"))
    assert saves["last"] == 2
    assert "no space left on device" in line
    monkeypatch.undo()
    last = load_checkpoint(run / "last.pt")
    assert last.epoch == 1 and last.train_state is not None  # the previous last.pt, whole
    assert not temp_files(run), temp_files(run)
    assert (run / "metrics.csv").read_text().strip().splitlines()[-1].startswith("1,")
    # and the run resumes from it
    code, out, err = run_cli("train", data, "--config", run / "config.yaml", "--resume", "--epochs", "2")
    assert code == 0, err[-3000:]
    assert load_checkpoint(run / "last.pt").epoch == 2


# =============================================================================================
# Extra cases
# =============================================================================================
def test_unicode_class_and_file_names_through_eval_and_submit(tmp_path, recwarn):
    classes = {"café": RGB["red"], "猫": RGB["green"], "ü b": RGB["blue"]}
    ckpt = H.make_checkpoint(tmp_path / "uni.pt", classes)
    val = H.write_image_folder(tmp_path / "vål", classes, per_class=2)
    code, out, err = run_cli("eval", ckpt, "--data", val, "--out", tmp_path / "r", "--workers", "0", "--no-html")
    assert code == 0, err[-3000:]
    assert "Traceback" not in out + err and err.strip() == ""
    assert (tmp_path / "r" / "confusion_uni.png").is_file()
    # the font has no 猫: drawn as a box, without a UserWarning per glyph on stderr
    assert not [w for w in recwarn if "Glyph" in str(w.message)]
    test = tmp_path / "tëst"
    test.mkdir()
    for i, (name, rgb) in enumerate(classes.items()):
        H.colour_image(rgb, seed=i).save(test / f"画像_{i}.png")
    csv_path = tmp_path / "prédiction.csv"
    code, _, err = run_cli("submit", ckpt, test, "--out", csv_path, "--workers", "0")
    assert code == 0, err
    text = csv_path.read_text(encoding="utf-8")
    assert text.splitlines() == ["image_name,pred_label", "画像_0,café", "画像_1,猫", "画像_2,ü b"]
    code, out, err = run_cli("submit", ckpt, test, "--check", csv_path)
    assert code == 0 and "valid submission" in out, err


@pytest.mark.parametrize("content, needle", [
    (b"", "header is (empty file)"),
    (b"image_name,pred_label\n", "3 test image(s) missing"),
    (b"\x00\x01\x02 binary \xff\xfe garbage", "cannot read"),
    ("image_name,pred_label\n1,caf\xe9\n".encode("latin-1"), "cannot read"),
    (b"image_name,pred_label\n1,red,extra\n2\n3,blue\n", "rows without exactly 2 columns at lines 2, 3"),
    (b'image_name,pred_label\n"1,red\n2,green\n', "not a valid submission"),
])
def test_check_of_a_malformed_csv_is_one_line(kit, tmp_path, content, needle):
    test = write_test_folder(tmp_path / "test", n=3)
    bad = tmp_path / "bad.csv"
    bad.write_bytes(content)
    one_error(*run_cli("submit", kit["ckpt"], test, "--check", bad), needle)


def test_check_of_a_folder_or_missing_csv(kit, tmp_path):
    test = write_test_folder(tmp_path / "test", n=1)
    one_error(*run_cli("submit", kit["ckpt"], test, "--check", tmp_path / "missing.csv"), "not found")
    one_error(*run_cli("submit", kit["ckpt"], test, "--check", test), str(test))


def test_pretrained_timm_never_downloads(monkeypatch, tmp_path):
    """--pretrained timm reads caches only: Hugging Face ids fail at once (offline), and models
    whose weights timm fetches by URL with torch.hub are refused before any download."""
    import torch.hub

    from vr.errors import VrError
    from vr.models.factory import create_model

    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_download(*a, **k):
        raise AssertionError("vr tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    t = time.monotonic()
    for name in ("test_resnet", "gcvit_xxtiny"):  # hf-hub id; plain URL
        with pytest.raises(VrError, match="never downloads") as e:
            create_model(name, 3, pretrained="timm")
        assert "\n" not in str(e.value)
    assert time.monotonic() - t < 10  # no network retries


def test_a_write_removes_only_orphaned_temp_files_of_its_target(tmp_path):
    """Temp files of dead writers go; a live writer's, unparsable names and other targets stay."""
    import subprocess

    from vr.util.io import atomic_write_text

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        keep = [tmp_path / f".x.csv.{live.pid}.a1.tmp", tmp_path / ".x.csv.junk.tmp", tmp_path / ".y.csv.999999999.a.tmp"]
        dead = tmp_path / ".x.csv.999999999.b2.tmp"
        for f in (*keep, dead):
            f.write_text("half")
        atomic_write_text(tmp_path / "x.csv", "done\n")
        assert (tmp_path / "x.csv").read_text() == "done\n"
        assert not dead.exists() and all(f.exists() for f in keep)
    finally:
        live.kill()


def test_a_yaml_path_with_a_nul_byte_is_one_line_before_predicting(kit, tmp_path):
    """Found: `out: "p\\0.csv"` from a --config file passed every check, predicted every image,
    then died with a ValueError traceback (embedded null byte) when the CSV was written."""
    (tmp_path / "c.yaml").write_text('out: "p\\0.csv"\n')
    one_error(*run_cli("submit", kit["ckpt"], write_test_folder(tmp_path / "test"), "--config", tmp_path / "c.yaml"),
              "out: cannot read 'p\\x00.csv' as a path")


def test_an_output_folder_that_is_a_file_is_named_as_such(kit, tmp_path):
    """Found: `vr eval --out FILE` said "cannot create output folder FILE: File exists"."""
    (tmp_path / "r").write_text("my notes\n")
    one_error(*run_cli("eval", kit["ckpt"], "--data", kit["val"], "--out", tmp_path / "r"), "is a file; give a folder")
    assert (tmp_path / "r").read_text() == "my notes\n"


def test_output_names_that_are_not_utf8_are_written_and_printed(kit, tmp_path):
    """Found: `vr submit --out b"p\\xe9.csv"` wrote the CSV and then died with a UnicodeEncodeError
    printing the "wrote ..." line (stdout takes UTF-8 only): exit 1 and a traceback after the
    work was done. The file keeps its name; the terminal shows it as p\\xe9.csv."""
    test = write_test_folder(tmp_path / "test")
    out = non_utf8(tmp_path, b"p\xe9.csv")
    p = run_vr("submit", kit["ckpt"], test, "--out", out, "--zip", "--workers", "0", cwd=tmp_path, env=STRICT_UTF8)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert "wrote " in p.stdout and "p\\xe9.csv" in p.stdout
    assert out.read_text().startswith("image_name,pred_label\n") and out.with_suffix(".zip").is_file()

