"""Competition recipes in `vr train`: class balance, focal loss, MixUp/CutMix, auto-augment presets,
backbone lr multiplier, head-only warm-up (--freeze-epochs), --init-from, --max-params, per_class.csv."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from conftest import CLASS_COLOURS, TINY_TRAIN, colour_image, run_vr, train_parts
from vr.models.checkpoint import load_checkpoint

FAST = [*TINY_TRAIN, "--no-tensorboard"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def imbalanced_data(tmp_path) -> Path:
    """train/{1,2,10} with 40, 10 and 4 images; val with 3 each."""
    root = tmp_path / "imb"
    rng = np.random.default_rng(0)
    for (name, colour), n in zip(CLASS_COLOURS.items(), (40, 10, 4)):
        for split, count in (("train", n), ("val", 3)):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(count):
                colour_image(rng, colour, (32, 32)).save(d / f"{i}.png")
    return root


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _support_share(run: Path) -> dict[str, float]:
    """Share of the training draws per class, over all epochs of per_class.csv."""
    tot = Counter()
    for r in _csv(run / "per_class.csv"):
        tot[r["class"]] += int(r["train_support"])
    n = sum(tot.values())
    return {c: k / n for c, k in tot.items()}


def _spy_and_fit(run) -> dict:
    """Train the parts ``run`` (conftest.train_parts) recording the weights training starts from,
    the criterion, and the targets of every training loss."""
    from vr.train.fit import fit

    seen = {"start": {n: t.detach().clone() for n, t in run.raw.state_dict().items()},
            "criterion": run.step.criterion, "targets": []}
    crit = run.step.criterion

    def loss(logits, y):
        if torch.is_grad_enabled():
            seen["targets"].append(y.detach().cpu())
        return crit(logits, y)

    run.step.criterion = loss
    seen["result"] = fit(run)
    return seen


# --- class balance ------------------------------------------------------------------------------

def test_balanced_sampler_evens_draws_and_shards_like_one_draw():
    from vr.data.balance import BalancedSampler

    labels = [0] * 40 + [1] * 10 + [2] * 4
    s = BalancedSampler(labels, 3, seed=5)
    drawn = Counter()
    for epoch in range(1, 4):
        s.set_epoch(epoch)
        idx = list(s)
        assert len(idx) == len(s) == 54  # the epoch length is unchanged
        drawn.update(labels[i] for i in idx)
    shares = [drawn[c] / sum(drawn.values()) for c in range(3)]
    assert all(0.25 <= x <= 0.42 for x in shares), shares
    # Without it, a shuffle draws each image once: the big class dominates.
    assert Counter(labels)[0] / len(labels) > 0.7

    # Two ranks: the same draw (seeded by seed + epoch alone), dealt out rank::2, padded to even.
    s.set_epoch(7)
    full = s.indices()
    r0, r1 = (BalancedSampler(labels, 3, rank=r, world_size=2, seed=5) for r in (0, 1))
    for r in (r0, r1):
        r.set_epoch(7)
    assert len(r0) == len(r1) == 27
    assert list(r0) == r0.indices()[0::2] and list(r1) == r0.indices()[1::2]
    assert r0.indices() == r1.indices() and len(full) == 54
    s.set_epoch(8)
    assert s.indices() != full  # a new draw every epoch


def test_class_weights_inverse_frequency_mean_one():
    from vr.data.balance import class_weights

    w = class_weights([0] * 40 + [1] * 10 + [2] * 4, 3)
    torch.testing.assert_close(w, torch.tensor([0.2, 0.8, 2.0]))
    assert w.mean().item() == pytest.approx(1.0)
    # a class without train images is never a target: weight 0, the others keep mean 1
    w = class_weights([0] * 3 + [2] * 1, 3)
    torch.testing.assert_close(w, torch.tensor([0.5, 0.0, 1.5]))


def test_balance_sampler_and_weights_end_to_end(imbalanced_data, tmp_path, cli, capsys):
    plain, bal = tmp_path / "plain", tmp_path / "bal"
    assert cli("train", imbalanced_data, "--out", plain, "--epochs", "1", *FAST)[0] == 0
    share = _support_share(plain)
    assert share["1"] > 0.7  # 40 of 54 images, drawn once each

    code, out, err = cli("train", imbalanced_data, "--out", bal, "--epochs", "3", "--balance", "sampler", *FAST)
    assert code == 0, err
    share = _support_share(bal)
    assert all(0.25 <= share[c] <= 0.42 for c in ("1", "2", "10")), share
    rows = _csv(bal / "per_class.csv")
    assert sum(int(r["train_support"]) for r in rows if r["epoch"] == "1") == 48  # 6 full batches of 8, as unbalanced

    seen = _spy_and_fit(train_parts(imbalanced_data, "--out", tmp_path / "w", "--epochs", "1", "--balance", "weights",
                                    "--loss", "focal", "--focal-gamma", "1.5", *FAST))
    crit = seen["criterion"]
    from vr.train.losses import FocalLoss

    assert isinstance(crit, FocalLoss) and crit.gamma == 1.5 and crit.label_smoothing == 0.1
    torch.testing.assert_close(crit.weight, torch.tensor([0.2, 0.8, 2.0]))
    assert "class weights" in capsys.readouterr().out


# --- focal loss ---------------------------------------------------------------------------------

def test_focal_gamma_zero_is_cross_entropy_for_every_target_kind():
    from vr.train.losses import FocalLoss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 5, generator=g) * 3
    y = torch.randint(0, 5, (16,), generator=g)
    soft = torch.softmax(torch.randn(16, 5, generator=g), 1)
    w = torch.rand(5, generator=g) + 0.2
    for target in (y, soft):
        for weight in (None, w):
            for ls in (0.0, 0.1):
                got = FocalLoss(0.0, weight, ls)(logits, target)
                want = F.cross_entropy(logits, target, weight=weight, label_smoothing=ls)
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_focal_down_weights_easy_examples():
    from vr.train.losses import FocalLoss

    easy = torch.tensor([[4.0, 0.0, 0.0]])  # p(target) ~ 0.96
    hard = torch.tensor([[0.0, 1.0, 0.0]])  # p(target) ~ 0.21
    y = torch.tensor([0])
    ratio = {}
    for name, logits in (("easy", easy), ("hard", hard)):
        ratio[name] = (FocalLoss(2.0)(logits, y) / F.cross_entropy(logits, y)).item()
    p_easy = torch.softmax(easy, 1)[0, 0].item()
    assert ratio["easy"] == pytest.approx((1 - p_easy) ** 2, rel=1e-5)
    assert ratio["easy"] < 0.01 < 0.5 < ratio["hard"] < 1
    # with label smoothing and mixed targets it stays finite and below CE
    soft = torch.tensor([[0.7, 0.3, 0.0]])
    got = FocalLoss(2.0, torch.tensor([1.0, 2.0, 0.5]), 0.1)(easy, soft)
    assert torch.isfinite(got) and got < F.cross_entropy(easy, soft, weight=torch.tensor([1.0, 2.0, 0.5]),
                                                         label_smoothing=0.1)


# --- MixUp / CutMix and augmentation presets ----------------------------------------------------

def test_batch_mix_soft_targets_probability_and_determinism():
    from vr.train.augment import BatchMix

    x = torch.randn(8, 3, 16, 16)
    y = torch.arange(8) % 4
    for kw in ({"mixup": 0.4}, {"cutmix": 1.0}, {"mixup": 0.4, "cutmix": 1.0, "switch_prob": 0.5}):
        m = BatchMix(4, seed=3, **kw)
        m.set_epoch(2)
        xm, ym = m(x, y)
        assert ym.shape == (8, 4) and ym.is_floating_point()
        torch.testing.assert_close(ym.sum(1), torch.ones(8))
        assert (ym.max(1).values < 1).any() and not torch.equal(xm, x)  # really mixed
        m.set_epoch(2)
        xm2, ym2 = m(x, y)
        assert torch.equal(xm, xm2) and torch.equal(ym, ym2)  # (seed, epoch, batch) decide the mix
    never = BatchMix(4, mixup=0.4, prob=0.0)
    assert never(x, y)[1] is y
    with pytest.raises(ValueError):
        BatchMix(4)


@pytest.mark.parametrize("preset, op", [("randaugment", "RandAugment"), ("trivialaugment", "TrivialAugmentWide"),
                                        ("augmix", "AugMix")])
def test_auto_augment_presets_build_and_run(preset, op):
    from vr.train.augment import build_train_transform
    from vr.models.preprocess import Preprocess

    pre = Preprocess(input_size=32, resize_size=36, interpolation="bilinear", mean=(0.5,) * 3, std=(0.25,) * 3)
    tf = build_train_transform(pre, preset)
    names = [type(t).__name__ for t in tf.transforms]
    assert names[:2] == ["BorderCrop", "RandomResizedCrop"] and op in names  # on top of the crop
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    outs = []
    for seed in range(3):
        torch.manual_seed(seed)
        out = tf(img)
        assert out.shape == (3, 32, 32) and out.dtype == torch.float32 and torch.isfinite(out).all()
        outs.append(out)
    assert not torch.equal(outs[0], outs[1])


def test_mixup_cutmix_make_soft_targets_until_mix_off_epochs(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    seen = _spy_and_fit(train_parts(tiny_data, "--out", run, "--epochs", "3", "--mixup", "0.4", "--cutmix", "1.0",
                                    "--mix-off-epochs", "1", "--aug", "augmix", *FAST))
    out = capsys.readouterr().out
    t = seen["targets"]
    assert len(t) == 12  # 4 batches x 3 epochs
    assert all(y.is_floating_point() and y.shape == (8, 3) for y in t[:8])
    assert any((y.max(1).values < 1).any() for y in t[:8])
    assert all(not y.is_floating_point() for y in t[8:])  # epoch 3: clean labels
    assert "MixUp/CutMix off" in out
    rows = _csv(run / "metrics.csv")
    assert len(rows) == 3 and all(0 <= float(r["train_acc"]) <= 1 for r in rows)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["mixup"] == 0.4 and saved["cutmix"] == 1.0 and saved["mix_off_epochs"] == 1 and saved["aug"] == "augmix"


# --- learning rates, freezing, init -------------------------------------------------------------

@pytest.mark.parametrize("sched", ["cosine", "onecycle", "step"])
def test_backbone_lr_mult_two_lrs_ten_x_apart_at_every_step(sched):
    import timm

    from vr.train.config import TrainConfig
    from vr.train.optim import LRSchedule, create_optimizer

    model = timm.create_model("test_resnet", num_classes=3)
    cfg = TrainConfig(data="x", lr=0.01, backbone_lr_mult=0.1, sched=sched, epochs=4, warmup_epochs=1, step_size=1)
    opt = create_optimizer(model, cfg)
    names = [g["name"] for g in opt.param_groups]
    assert names == ["head", "head_no_decay", "backbone", "backbone_no_decay"]
    head = {id(p) for g in opt.param_groups[:2] for p in g["params"]}
    assert head == {id(model.fc.weight), id(model.fc.bias)}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    assert all(p.ndim <= 1 for g in opt.param_groups if g["name"].endswith("no_decay") for p in g["params"])
    assert {g["weight_decay"] for g in opt.param_groups if g["name"].endswith("no_decay")} == {0.0}
    sch = LRSchedule(opt, cfg, 5)
    for _ in range(sch.total):
        lrs = sorted({round(g["lr"], 15) for g in opt.param_groups})
        assert len(lrs) == 2 and lrs[1] == pytest.approx(10 * lrs[0], rel=1e-9)
        assert sch.lr == opt.param_groups[0]["lr"] == pytest.approx(10 * sch.backbone_lr)
        sch.step()
    # without the option: the two groups of before, whatever the lr
    assert len(create_optimizer(model, TrainConfig(data="x")).param_groups) == 2


def test_freeze_epochs_across_a_resume_mid_freeze(tiny_data, tmp_path, cli):
    """--freeze-epochs 2 of 3, killed after epoch 1 (last.pt written, per_class.csv not yet), resumed:
    epochs 1-2 leave every backbone tensor (weights and BatchNorm statistics) as it started, epoch 3
    trains it, per_class.csv lists each epoch once, and the result equals an uninterrupted run."""
    from vr.train.fit import fit

    opts = ["--epochs", "3", "--freeze-epochs", "2", "--save-top-k", "3", "--backbone-lr-mult", "0.5", *FAST]
    ref = tmp_path / "ref"
    assert cli("train", tiny_data, "--out", ref, *opts)[0] == 0

    class Crash(BaseException):
        pass

    run = tmp_path / "run"
    parts = train_parts(tiny_data, "--out", run, *opts)
    real = parts.logger.log_per_class

    def log_per_class(record):
        if record["epoch"] == 1:
            raise Crash
        real(record)

    parts.logger.log_per_class = log_per_class
    init = {n: t.detach().clone() for n, t in parts.raw.state_dict().items()}
    with pytest.raises(Crash):
        fit(parts)
    assert load_checkpoint(run / "last.pt").epoch == 1 and not (run / "per_class.csv").exists()
    code, out, err = cli("train", tiny_data, "--config", run / "config.yaml", "--resume")
    assert code == 0, err
    assert "epoch 3: backbone unfrozen" in out and "epoch 3 worst classes" in out

    backbone = [k for k in init if not k.startswith("fc.")]
    assert any("running_mean" in k for k in backbone)
    for epoch in (1, 2):
        sd = load_checkpoint(run / f"epoch{epoch:03d}.pt").state_dict
        assert all(torch.equal(sd[k], init[k]) for k in backbone), epoch
        assert not torch.equal(sd["fc.weight"], init["fc.weight"])
    sd3 = load_checkpoint(run / "epoch003.pt").state_dict
    assert not torch.equal(sd3["conv1.0.weight"], init["conv1.0.weight"])
    assert all(not torch.equal(sd3[k], init[k]) for k in backbone if k.endswith("running_mean"))

    pc = _csv(run / "per_class.csv")
    assert [int(r["epoch"]) for r in pc] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert [r["class"] for r in pc[:3]] == ["1", "2", "10"] and {r["val_support"] for r in pc} == {"4"}
    assert [r["epoch"] for r in _csv(run / "metrics.csv")] == ["1", "2", "3"]
    ref_pc, ref_rows, rows = _csv(ref / "per_class.csv"), _csv(ref / "metrics.csv"), _csv(run / "metrics.csv")
    assert [(r["train_acc"], r["val_acc"]) for r in pc] == [(r["train_acc"], r["val_acc"]) for r in ref_pc]
    for a, b in zip(ref_rows, rows):
        for k in ("train_loss", "val_loss", "lr", "backbone_lr"):
            assert float(a[k]) == pytest.approx(float(b[k]), rel=1e-4), (a["epoch"], k)
        assert float(b["backbone_lr"]) == pytest.approx(0.5 * float(b["lr"]), rel=1e-5)
    last_ref, last = load_checkpoint(ref / "last.pt"), load_checkpoint(run / "last.pt")
    for k, v in last_ref.state_dict.items():
        torch.testing.assert_close(last.state_dict[k], v, rtol=1e-4, atol=1e-5)


def test_init_from_starts_a_new_run_at_another_size(tiny_data, tmp_path, cli, capsys):
    src = tmp_path / "src"
    assert cli("train", tiny_data, "--out", src, "--epochs", "1", *FAST)[0] == 0
    source = load_checkpoint(src / "best.pt")

    hi = tmp_path / "hi"
    args = [a for a in FAST]
    args[args.index("--img-size") + 1] = "48"
    seen = _spy_and_fit(train_parts(tiny_data, "--out", hi, "--epochs", "2", "--init-from", src / "best.pt", *args))
    out = capsys.readouterr().out
    assert "initialised from" in out and "resuming" not in out
    start = seen["start"]
    assert start.keys() == source.state_dict.keys()
    assert all(torch.equal(start[k], v) for k, v in source.state_dict.items())
    assert [int(r["epoch"]) for r in _csv(hi / "metrics.csv")] == [1, 2]
    last = load_checkpoint(hi / "last.pt")
    assert last.preprocess.input_size == 48 and source.preprocess.input_size == 32
    assert last.train_state["schedule"]["step_num"] == 2 * 4  # a fresh schedule: 2 epochs of 4 steps
    assert Path(yaml.safe_load((hi / "config.yaml").read_text())["init_from"]) == src / "best.pt"

    # the architecture must match: one line, no traceback
    code, out, err = cli("train", tiny_data, "--out", tmp_path / "x", "--init-from", src / "best.pt", *FAST,
                         "--model", "resnet18")
    assert code == 2 and "test_resnet" in err and "resnet18" in err and "architecture must match" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err + out
    # so must the classes: the difference is named
    (tiny_data / "train" / "10").rename(tiny_data / "train" / "11")
    (tiny_data / "val" / "10").rename(tiny_data / "val" / "11")
    code, out, err = cli("train", tiny_data, "--out", tmp_path / "y", "--init-from", src / "best.pt", *FAST)
    assert code == 2 and "'10'" in err and "'11'" in err and len(err.strip().splitlines()) == 1


# --- parameter budget, validation ---------------------------------------------------------------

def test_max_params_refuses_before_any_work(tiny_data, tmp_path, cli, monkeypatch):
    import vr.train.setup

    monkeypatch.setattr(vr.train.setup, "scan_image_folder", lambda *a, **k: pytest.fail("scanned the images"))
    run = tmp_path / "run"
    code, out, err = cli("train", tiny_data, "--out", run, "--max-params", "1K", *FAST)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err + out
    assert "test_resnet has 0.37M parameters" in err and "372,979 > 1,000" in err
    assert not (run / "config.yaml").exists()
    # the DDP launcher refuses before starting torchrun
    code, out, err = cli("train", tiny_data, "--out", tmp_path / "r2", "--max-params", "1K", "--nproc-per-node", "2",
                         *FAST)
    assert code == 2 and "372,979 > 1,000" in err and "launching" not in out


def test_max_params_within_budget_is_printed(tiny_data, tmp_path, cli):
    code, out, err = cli("train", tiny_data, "--out", tmp_path / "run", "--epochs", "1", "--max-params", "0.5M", *FAST)
    assert code == 0, err
    assert "0.37M params (budget 0.50M)" in out


@pytest.mark.parametrize("args, needle", [
    (["--mixup", "-0.1"], "--mixup"),
    (["--cutmix", "-1"], "--cutmix"),
    (["--mix-prob", "1.5"], "--mix-prob"),
    (["--mix-switch-prob", "-0.5"], "--mix-switch-prob"),
    (["--mix-off-epochs", "-1"], "--mix-off-epochs"),
    (["--focal-gamma", "-1"], "--focal-gamma"),
    (["--backbone-lr-mult", "0"], "--backbone-lr-mult"),
    (["--freeze-epochs", "-1"], "--freeze-epochs"),
    (["--max-params", "lots"], "--max-params"),
    (["--max-params", "0"], "--max-params"),
    (["--init-from", "nowhere.pt"], "nowhere.pt"),
])
def test_bad_recipe_options_one_line(tiny_data, tmp_path, cli, args, needle):
    code, out, err = cli("train", tiny_data, "--out", tmp_path / "run", *FAST, *args)
    assert code == 2, err
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err + out


# --- DDP (two gloo processes: slow to start, so opt-in) -----------------------------------------

@pytest.mark.slow
def test_ddp_balanced_sampler_freeze_mix_and_per_class_counts(tiny_data, tmp_path):
    run = tmp_path / "run"
    args = [a for a in FAST]
    args[args.index("--batch-size") + 1] = "4"
    p = run_vr("train", tiny_data, "--out", run, "--epochs", "2", "--nproc-per-node", "2", "--balance", "sampler",
               "--freeze-epochs", "1", "--mixup", "0.4", "--backbone-lr-mult", "0.1", *args,
               env={"OMP_NUM_THREADS": "1"}, timeout=400)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "DDP: 2 processes (gloo)" in p.stdout and "epoch 2: backbone unfrozen" in p.stdout
    pc = _csv(run / "per_class.csv")
    for epoch in ("1", "2"):
        rows = [r for r in pc if r["epoch"] == epoch]
        # counts summed over both ranks: 2 ranks x 4 batches x 4 images, and all 12 val images
        assert sum(int(r["train_support"]) for r in rows) == 32
        assert sum(int(r["val_support"]) for r in rows) == 12
    last = load_checkpoint(run / "last.pt")
    assert last.epoch == 2 and last.train_state["world_size"] == 2


def test_ema_warmup_lets_a_short_run_average_recent_weights(tiny_data, tmp_path, cli):
    """With a long-run decay (0.99999) and ~10 steps, a plain EMA stays near the first step's
    weights; the warm-up ramp makes it follow the training weights."""
    dist = {}
    for flag in ("--ema-warmup", "--no-ema-warmup"):
        run = tmp_path / flag
        code, _, err = cli("train", tiny_data, "--out", run, "--epochs", "2", "--ema", "--ema-decay", "0.99999",
                           flag, *FAST)
        assert code == 0, err
        last = load_checkpoint(run / "last.pt")
        ema, raw = last.train_state["ema"], last.state_dict
        dist[flag] = sum(float((ema[k].float() - raw[k].float()).norm()) for k in raw if raw[k].is_floating_point())
        assert yaml.safe_load((run / "config.yaml").read_text())["ema_warmup"] is (flag == "--ema-warmup")
    assert dist["--ema-warmup"] < 0.5 * dist["--no-ema-warmup"], dist


def test_defaults_follow_the_run_a_fine_tune_gets_its_recipe_and_ema_spans_the_run(tiny_data, tmp_path, cli):
    """Left unset, a fine-tune from --pretrained weights gets FINE_TUNE (head lr 1e-3, backbone
    x0.1, an EMA that starts at the pretrained weights, no ramp) and a run from scratch SCRATCH;
    the EMA decay follows the run's length. config.yaml records the values used (so --resume is
    exact), and explicit flags win."""
    import timm

    from vr.models.checkpoint import load_checkpoint
    from vr.train.config import TrainConfig

    w = tmp_path / "w.pth"
    pretrained = timm.create_model("test_resnet", num_classes=5).state_dict()
    torch.save(pretrained, w)
    run = tmp_path / "ft"
    code, out, err = cli("train", tiny_data, "--out", run, "--epochs", "2", "--pretrained", w, *FAST)
    assert code == 0, err
    saved = yaml.safe_load((run / "config.yaml").read_text())
    steps = 2 * 4  # 36 images, batch 8, drop_last: 4 steps an epoch
    assert (saved["backbone_lr_mult"], saved["ema"], saved["ema_warmup"], saved["freeze_epochs"]) == (0.1, True, False, 0)
    assert TrainConfig(data="x", pretrained="w.pth").resolved(10).lr == 1e-3  # FAST passes its own --lr
    assert saved["ema_decay"] == pytest.approx(max(0.9, 1 - 1 / steps))
    rows = _csv(run / "metrics.csv")
    assert float(rows[0]["backbone_lr"]) == pytest.approx(0.1 * float(rows[0]["lr"]))
    # no ramp: the average keeps a share of the pretrained backbone, so it lies nearer to it
    last = load_checkpoint(run / "last.pt")
    ema, raw = last.train_state["ema"], last.state_dict
    keys = [k for k in raw if raw[k].is_floating_point() and k in pretrained and "fc" not in k
            and raw[k].shape == pretrained[k].shape]
    moved = sum(float((raw[k].float() - pretrained[k].float()).norm()) for k in keys)
    kept = sum(float((ema[k].float() - pretrained[k].float()).norm()) for k in keys)
    assert 0 < kept < 0.9 * moved, (kept, moved)
    scratch = TrainConfig(data="x", epochs=100).resolved(steps_per_epoch=400)
    assert (scratch.lr, scratch.backbone_lr_mult, scratch.ema, scratch.ema_warmup) == (3e-4, 1.0, False, True)
    assert scratch.ema_decay == 0.9998  # a long run: the usual ceiling
    assert TrainConfig(data="x", epochs=2, ema=True).resolved(4).ema_decay == pytest.approx(0.9)  # 1 - 1/(0.2 x 8) clipped
    init = TrainConfig(data="x", pretrained="w.pth", init_from=tmp_path / "best.pt").resolved(10)
    assert (init.lr, init.ema) == (3e-4, False)  # --init-from ignores --pretrained: not a fine-tune from it
    assert saved["channels_last"] is False  # 32 px: NHWC measured slower there
    cl = {(d, px): TrainConfig(data="x").resolved(10, d, px).channels_last for d in ("cpu", "cuda") for px in (32, 64)}
    assert cl == {("cpu", 32): False, ("cpu", 64): True, ("cuda", 32): False, ("cuda", 64): False}
    assert TrainConfig(data="x", channels_last=False).resolved(10, "cpu", 224).channels_last is False
    mine = TrainConfig(data="x", pretrained="w.pth", lr=5e-4, backbone_lr_mult=1.0, ema=False, ema_warmup=True,
                       freeze_epochs=1, ema_decay=0.99).resolved(10)
    assert (mine.lr, mine.backbone_lr_mult, mine.ema, mine.ema_warmup, mine.freeze_epochs, mine.ema_decay) == \
        (5e-4, 1.0, False, True, 1, 0.99)