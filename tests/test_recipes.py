"""Recipes: --recipe paper|strong as presets every flag overrides; their parts (AdamW, no decay on
biases/norms, one-cycle, RandAugment, Cutout) checked against independent computations."""
import json
import random

import numpy as np
import pytest
import torch
import torch.nn as nn

import main as train_main
from helpers import run_py, tiny_demo, train_argv
from pipeline.data.dataset import ImageTransform, cut_out
from pipeline.models.model import CSRANet
from pipeline.training.optim import make_optimizer, make_schedule, onecycle_factor, param_groups

RECIPE_KEYS = ("optimizer", "scheduler", "lr", "momentum", "w_d", "no_decay_norm_bias", "warmup_epoch",
               "onecycle_peak", "total_epoch", "ema", "loss", "gamma_pos", "gamma_neg", "asl_clip", "randaugment",
               "cutout", "img_size", "batch_size", "decay_every", "head_lr_mult")


@pytest.mark.parametrize("dataset", ["voc07", "coco", "wider", "demo"])
def test_default_run_is_the_paper_recipe(dataset):
    default = vars(train_main.get_args(["--dataset", dataset]))
    paper = vars(train_main.get_args(["--dataset", dataset, "--recipe", "paper"]))
    assert default == paper
    # ... and the paper's own numbers (SPEC: SGD 0.9, lr 0.01, wd 1e-4, 2 warm-up epochs, 30 epochs, BCE)
    if dataset != "demo":
        assert (paper["optimizer"], paper["scheduler"], paper["lr"], paper["momentum"], paper["w_d"],
                paper["warmup_epoch"], paper["total_epoch"], paper["loss"], paper["ema"], paper["randaugment"],
                paper["cutout"], paper["no_decay_norm_bias"], paper["head_lr_mult"]) == \
            ("sgd", "step", 0.01, 0.9, 1e-4, 2, 30, "bce", None, False, 0.0, False, 10)


def test_strong_recipe_values_with_the_papers_resolution_and_batch():
    a = train_main.get_args(["--dataset", "coco", "--recipe", "strong"])
    assert (a.optimizer, a.lr, a.head_lr_mult, a.w_d, a.no_decay_norm_bias, a.scheduler, a.onecycle_peak,
            a.total_epoch, a.ema) == ("adamw", 1e-4, 1.0, 1e-4, True, "onecycle", 0.2, 40, 0.9997)
    assert (a.loss, a.gamma_neg, a.gamma_pos, a.asl_clip, a.randaugment, a.cutout) == ("asl", 4, 0, 0.05, True, 0.5)
    assert (a.img_size, a.batch_size, a.decay_every) == (448, 16, 5)
    w = train_main.get_args(["--dataset", "wider", "--recipe", "strong"])
    assert (w.img_size, w.batch_size, w.normalize) == (224, 64, "half")


def test_typed_flags_override_the_preset_and_only_those():
    base = vars(train_main.get_args(["--recipe", "strong"]))
    a = vars(train_main.get_args(["--recipe", "strong", "--lr", "3e-4", "--no_randaugment", "--ema", "none",
                                  "--decay_norm_bias", "--cutout", "0", "--loss", "bce", "--total_epoch", "5"]))
    changed = {k for k in RECIPE_KEYS if a[k] != base[k]}
    assert changed == {"lr", "randaugment", "ema", "no_decay_norm_bias", "cutout", "loss", "total_epoch",
                       "gamma_neg", "asl_clip"}  # the loss's own options follow the loss typed
    assert (a["lr"], a["randaugment"], a["ema"], a["no_decay_norm_bias"], a["cutout"]) == (3e-4, False, None, False, 0)
    p = train_main.get_args(["--optimizer", "adamw", "--scheduler", "onecycle", "--randaugment", "--cutout", "0.25"])
    assert (p.recipe, p.optimizer, p.scheduler, p.randaugment, p.cutout, p.loss) == \
        ("paper", "adamw", "onecycle", True, 0.25, "bce")


@pytest.mark.parametrize("argv,msg", [
    (["--recipe", "strong", "--momentum", "0.8"],
     "--momentum applies to --optimizer sgd, but this run uses --optimizer adamw (--recipe strong's)"),
    (["--recipe", "strong", "--warmup_epoch", "1"], "--warmup_epoch applies to --scheduler step"),
    (["--onecycle_peak", "0.3"], "--onecycle_peak applies to --scheduler onecycle"),
    (["--recipe", "fancy"], "--recipe: invalid choice"),
    (["--cutout", "1.5"], "--cutout must be a fraction"),
    (["--ema", "often"], "--ema: expected a decay"),
])
def test_flags_that_cannot_apply_are_one_line_errors(argv, msg, capsys):
    with pytest.raises(SystemExit) as e:
        train_main.main(argv)
    text = str(e.value.code) if isinstance(e.value.code, str) else capsys.readouterr().err
    assert msg in text and len(text.strip().splitlines()) == 1


def test_help_shows_each_presets_values(capsys):
    with pytest.raises(SystemExit):
        train_main.get_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "paper (the CSRA paper's): optimizer sgd, scheduler step, lr 0.01, head_lr_mult 10.0, momentum 0.9" in text
    assert "optimizer adamw, scheduler onecycle, lr 0.0001, head_lr_mult 1.0, w_d 0.0001, no decay on " \
           "biases/norms, onecycle_peak 0.2, total_epoch 40, ema 0.9997, loss asl, randaugment, cutout 0.5" in text
    assert "--dataset demo changes them: paper: lr 0.05, total_epoch 10, warmup_epoch 1; strong: lr 0.002, " \
           "ema 0.99, cutout 0.0, total_epoch 10" in text
    with pytest.raises(SystemExit):  # with a recipe named, the defaults shown are its values
        train_main.get_args(["--recipe", "strong", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "adamw (betas 0.9, 0.999) (default: adamw)" in text


def torch_onecycle(total, peak, steps):
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=total, pct_start=peak,
                                                cycle_momentum=False)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("total,peak", [(100, 0.2), (37, 0.3), (630, 0.2)])
def test_onecycle_matches_torchs_one_cycle(total, peak):
    ours = [onecycle_factor(s, total, peak) for s in range(total)]
    assert ours == pytest.approx(torch_onecycle(total, peak, total), rel=1e-12, abs=1e-15)
    assert ours[0] == pytest.approx(1 / 25)          # hand-checked ends: peak / 25 ...
    assert max(ours) == pytest.approx(1.0, abs=1e-3)  # ... the peak ...
    assert ours[-1] == pytest.approx(1 / 25e4)        # ... and peak / 25 / 1e4 at the last step
    assert abs(ours.index(max(ours)) - (peak * total - 1)) <= 1


def test_schedule_is_per_iteration_and_spans_the_run():
    f = make_schedule("onecycle", iters_per_epoch=10, total_epochs=4, warmup_epochs=2, decay_every=1,
                      onecycle_peak=0.25)
    lrs = [f(s) for s in range(40)]
    assert lrs[9] == pytest.approx(1.0) and all(a < b for a, b in zip(lrs[:9], lrs[1:10]))
    assert all(a > b for a, b in zip(lrs[9:39], lrs[10:40]))


def test_no_decay_groups_hold_exactly_the_biases_and_norm_weights():
    model = CSRANet("small_cnn", 5, num_heads=2, img_size=32, pretrained="none")
    groups = param_groups(model, 0.1, 10.0, 1e-4, no_decay_norm_bias=True)
    assert [g["name"] for g in groups] == ["backbone", "head", "backbone_no_decay", "head_no_decay"]
    names = {id(p): n for n, p in model.named_parameters()}
    plain = {names[id(p)] for g in groups[2:] for p in g["params"]}
    # independently: a CNN's one-dimensional parameters are its biases and its BatchNorm weights
    assert plain == {n for n, p in model.named_parameters() if p.ndim == 1} and plain
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert [g["weight_decay"] for g in groups] == [1e-4, 1e-4, 0.0, 0.0]
    assert [g["lr"] for g in groups] == [0.1, 1.0, 0.1, 1.0]
    assert len(param_groups(model, 0.1, 10.0, 1e-4)) == 2


def test_adamw_decays_weights_but_not_biases_and_norms():
    """With zero gradients AdamW's only change is the decoupled decay w <- w (1 - lr wd)."""
    model = CSRANet("small_cnn", 5, img_size=32, pretrained="none")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = make_optimizer("adamw", param_groups(model, 0.1, 1.0, 0.5, no_decay_norm_bias=True), 0.1, 0.9, 0.5)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():
        expected = before[n] if p.ndim == 1 else before[n] * (1 - 0.1 * 0.5)
        assert torch.allclose(p.detach(), expected, rtol=1e-6, atol=1e-7), n


class FixedRng:
    def __init__(self, values):
        self.values = list(values)

    def randrange(self, n):
        v = self.values.pop(0)
        assert 0 <= v < n
        return v


def test_cutout_by_hand():
    img = np.zeros((8, 10, 3), dtype=np.uint8)
    cut_out(img, 0.5, FixedRng([4, 5, 10, 20, 30]))  # side 4, centre (4, 5): rows 2-5, columns 3-6
    expected = np.zeros((8, 10, 3), dtype=np.uint8)
    for y in range(2, 6):
        for x in range(3, 7):
            expected[y, x] = (10, 20, 30)
    np.testing.assert_array_equal(img, expected)
    corner = np.full((8, 8, 3), 7, dtype=np.uint8)
    cut_out(corner, 0.5, FixedRng([0, 7, 1, 2, 3]))  # clipped at the border: rows 0-1, columns 5-7
    assert (corner[:2, 5:] == (1, 2, 3)).all()
    assert (corner == 7).sum() == 3 * (64 - 6)


def sample_image(size=48):
    from PIL import Image
    g = torch.Generator().manual_seed(0)
    arr = torch.randint(0, 256, (size, size + 8, 3), generator=g, dtype=torch.uint8).numpy()
    return Image.fromarray(arr)


def test_randaugment_and_cutout_are_seeded_per_sample_and_leave_torchs_rng_alone():
    t = ImageTransform(32, train=True, randaugment=True, cutout=0.5)
    plain = ImageTransform(32, train=True)
    img = sample_image()
    state = torch.get_rng_state()
    a = t(img, random.Random(123))
    assert torch.equal(torch.get_rng_state(), state)  # the caller's generator is untouched
    assert torch.equal(a, t(img, random.Random(123))) and a.dtype == torch.uint8 and a.shape == (3, 32, 32)
    outs = [t(img, random.Random(s)) for s in range(8)]
    assert len({o.numpy().tobytes() for o in outs}) == 8
    assert sum(not torch.equal(t(img, random.Random(s)), plain(img, random.Random(s))) for s in range(8)) == 8
    assert ImageTransform(32, train=False, randaugment=True, cutout=0.5).randaugment is None  # training only


def test_our_randaugment_is_torchvisions():
    from torchvision.transforms import RandAugment
    from pipeline.data.dataset import make_randaugment
    img = sample_image(40)
    ours, theirs = make_randaugment(), RandAugment()
    for seed in range(30):
        torch.manual_seed(seed)
        a = np.asarray(ours(img))
        torch.manual_seed(seed)
        np.testing.assert_array_equal(a, np.asarray(theirs(img)))


def test_strong_run_records_every_resolved_value(tmp_path):
    files = tiny_demo(tmp_path / "data", num_train=16, num_test=8)
    out = tmp_path / "run"
    r = run_py("main.py", *train_argv(files, out, "--total_epoch", "1", "--lr", "0.003", "--cutout", "0.4",
                                      recipe="strong"))
    assert r.returncode == 0, r.stderr[-2000:]
    rec = json.loads((out / "args.json").read_text())
    assert (rec["recipe"], rec["optimizer"], rec["scheduler"], rec["lr"], rec["ema"], rec["loss"], rec["gamma_neg"],
            rec["randaugment"], rec["cutout"], rec["no_decay_norm_bias"]) == \
        ("strong", "adamw", "onecycle", 0.003, 0.99, "asl", 4.0, True, 0.4, True)
    assert rec["head_lr_mult"] == 1.0 and rec["total_epoch"] == 1
    assert "\nrecipe     strong: optimizer adamw, scheduler onecycle, lr 0.003*" in r.stdout
    log = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert "ema_mAP" in log and log["loss"] == "asl"
    # a one-cycle run cannot be lengthened on resume: its LR curve spans the recorded epochs
    r = run_py("main.py", *train_argv(files, out, "--total_epoch", "3", recipe="strong"), "--resume", str(out))
    assert r.returncode != 0 and "--scheduler onecycle" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_an_ema_decay_outside_zero_to_one_is_refused():
    from main import get_args
    from pipeline.errors import ConfigError
    assert get_args(["--ema", "none"]).ema is None and get_args(["--ema", "0.99"]).ema == 0.99
    for bad in ("0", "1", "1.5"):  # 0 used to mean "no EMA"; none says that
        with pytest.raises(ConfigError, match=r"--ema must be in \(0, 1\)"):
            get_args(["--ema", bad])
    with pytest.raises(SystemExit):
        get_args(["--ema", "fast"])


def test_config_repeats_a_recorded_run_and_typed_flags_win(tmp_path):
    files = tiny_demo(tmp_path / "data", num_train=16, num_test=4)  # 2 steps: 1 step at warm-up LR 0 is refused
    first = tmp_path / "a"
    r = run_py("main.py", *train_argv(files, first, "--total_epoch", "1", "--lr", "0.03", "--loss", "focal"))
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_py("main.py", "--config", first / "args.json", "--seed", "3")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"config     the options of {first / 'args.json'}; typed now: --seed" in r.stdout
    a = json.loads((first / "args.json").read_text())
    b = json.loads((tmp_path / "a_2" / "args.json").read_text())  # a new run beside it: never into it
    differ = {k for k in set(a) | set(b) if a.get(k) != b.get(k)}
    assert differ == {"seed", "run_id", "config", "config_changes", "record_names"}
    assert (b["lr"], b["loss"], b["total_epoch"], b["seed"]) == (0.03, "focal", 1, 3)
    r = run_py("main.py", "--config", first, "--head", "gap", "--total_epoch", "1")  # lam is CSRA's 0.1 there
    assert r.returncode == 0 and "gap head (plain)" in r.stdout, r.stderr[-2000:]
    assert json.loads((tmp_path / "a_3" / "args.json").read_text())["lam"] == 0.0
    r = run_py("main.py", "--config", tmp_path / "data", "--seed", "3")
    assert r.returncode == 1 and "--config" in r.stderr and "no args.json there" in r.stderr
    r = run_py("main.py", "--config", first, "--resume", first)
    assert r.returncode == 1 and "use one" in r.stderr
