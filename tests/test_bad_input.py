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
from conftest import CLASS_COLOURS, TINY_TRAIN, colour_image, signal_after_first_epoch, write_image_folder
from vr.cli import main
from vr.data.images import check_image, load_rgb
from vr.models.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
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
    from vr.data.folders import _check_all

    bombs = [write_bomb_png(tmp_path / "bomb0.png")]
    for i in range(1, 24):
        bombs.append(tmp_path / f"bomb{i}.png")
        shutil.copy(bombs[0], bombs[-1])
    small = []
    for i in range(96):
        small.append(tmp_path / f"s{i}.png")
        Image.new("RGB", (8, 8)).save(small[-1])
    for _ in range(3):
        bad = _check_all(bombs + small)
        assert sorted(bad) == sorted(bombs)
        assert all("too many pixels" in bad[b] for b in bombs)


@pytest.mark.parametrize("name", IGNORED)
def test_non_image_files_are_ignored(awkward_run, name):
    assert name not in awkward_run["err"] and name not in awkward_run["out"]


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


@pytest.mark.parametrize("case", ["parent is a file", "output is a folder", "read-only folder"])
def test_submit_unwritable_output_path(kit, tmp_path, monkeypatch, case):
    test = write_test_folder(tmp_path / "test", n=2)
    if case == "parent is a file":
        (tmp_path / "afile").write_text("x")
        out, needle = tmp_path / "afile" / "p.csv", "cannot write"
    elif case == "output is a folder":
        (tmp_path / "adir").mkdir()
        out, needle = tmp_path / "adir", "it is a folder"
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        (ro / "p.csv").write_text("previous\n")
        ro.chmod(0o555)
        out, needle = ro / "p.csv", "p.csv"
        if os.geteuid() == 0:  # root writes anywhere: make the folder refuse as it would for a user
            import tempfile

            real = tempfile.mkstemp

            def mkstemp(*a, dir=None, **k):
                if dir is not None and Path(dir) == ro:
                    raise PermissionError(errno.EACCES, "Permission denied", str(ro))
                return real(*a, dir=dir, **k)

            monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    try:
        line = one_error(*run_cli("submit", kit["ckpt"], test, "--out", out, "--workers", "0"), needle)
    finally:
        if case == "read-only folder":
            (tmp_path / "ro").chmod(0o755)
    assert str(out) in line or case == "output is a folder"
    if case == "read-only folder":
        assert (out).read_text() == "previous\n" and not temp_files(tmp_path)


# A `vr submit` that stops where the test wants it: in the model (phase "predict") or halfway
# through writing the CSV (phase "write"), after touching READY; then it sleeps until signalled.
SUBMIT_HELPER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    phase, ready = sys.argv[1], Path(sys.argv[2])
    if phase == "predict":
        from vr.evaluate.predictors import TorchPredictor
        def run(self, prepared):
            ready.touch()
            time.sleep(120)
        TorchPredictor.run = run
    else:  # every write goes through atomic_path: stop with half the CSV in the temporary file
        import contextlib
        import vr.util.io as vio
        real = vio.atomic_path
        @contextlib.contextmanager
        def atomic_path(path):
            with real(path) as tmp:
                yield tmp
                if Path(path).suffix == ".csv":
                    data = tmp.read_bytes()
                    tmp.write_bytes(data[: len(data) // 2])
                    ready.touch()
                    time.sleep(120)
        vio.atomic_path = atomic_path
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


def test_every_onnx_model_is_checked_before_onnxruntime_sees_it():
    """A user's .onnx goes through onnx.checker before ONNX Runtime (behaviour: see
    test_onnx_graph_failing_the_checker_never_reaches_onnxruntime); the only other sessions are
    the export's parity gate, on the graph vr just built and checked."""
    import inspect

    from vr.evaluate import predictors

    init = inspect.getsource(predictors.OnnxPredictor.__init__)
    assert init.index("check_onnx_file(path)") < init.index("InferenceSession(")
    assert "check_onnx_file(path)" in inspect.getsource(predictors.model_classes)
    sessions = {f.relative_to(REPO).as_posix() for f in (REPO / "vr").rglob("*.py") if "InferenceSession(" in f.read_text()}
    assert sessions <= {"vr/evaluate/predictors.py", "vr/export/parity.py"}, sessions


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


def _nan_after(n_training_forwards: int):
    """Wrap vr.train.loop.create_model: the model's logits turn NaN after this many training-mode
    forwards (the loss then is NaN; eval-mode forwards are left alone)."""
    import vr.train.loop as loop

    real = loop.create_model
    seen = {"n": 0}

    def create(*a, **k):
        model = real(*a, **k)

        def hook(module, inputs, output):
            if module.training:
                seen["n"] += 1
                if seen["n"] > n_training_forwards:
                    return output * float("nan")
            return output

        model.register_forward_hook(hook)
        return model

    return create


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(data, tmp_path, monkeypatch):
    import vr.train.loop as loop

    monkeypatch.setattr(loop, "create_model", _nan_after(1))  # 12 images, batch 8: one step per epoch
    run = tmp_path / "run"
    line = one_error(*run_cli("train", data, "--out", run, "--epochs", "3", *FAST),
                     "loss became nan or inf at epoch 2", "keeps epoch 1", "--lr")
    assert str(run / "last.pt") in line
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
