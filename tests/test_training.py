"""main.py end to end: recipe, schedule, checkpoints, resume after SIGKILL, EMA, NaN, DDP."""
import json
import math
import os
import re

import pytest
import torch

import main as train_main
from pipeline.training.optim import step_factor as lr_factor
from helpers import kill_mid_epoch, run_py, tiny_demo, train_argv, wrap_training_loss


def read_log(folder):
    with open(os.path.join(folder, "log.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def val_map(files, ckpt, *extra):
    r = run_py("val.py", "--dataset", "demo", "--test_json", files["test"], "--classes", files["classes"],
               "--img_size", "32", "--batch_size", "8", "--num_workers", "0", "--load_from", str(ckpt), *extra)
    assert r.returncode == 0, r.stderr[-2000:]
    return float(re.search(r"^mAP: ([0-9.]+)", r.stdout, re.M).group(1)), r.stdout


def spec_lr(base, t, ipe, warm_epochs, decay_every):
    """SPEC section 2, written independently: linear from 0 over the warm-up iterations, x0.1 per
    `decay_every` finished epochs."""
    warm_iters = warm_epochs * ipe
    w = t / warm_iters if t < warm_iters else 1.0
    return base * w * (0.1 ** (int(t / ipe) // decay_every))


def test_lr_factor_by_hand():
    assert lr_factor(0, 10, 2, 4) == 0.0
    assert lr_factor(5, 10, 2, 4) == pytest.approx(0.25)
    assert lr_factor(20, 10, 2, 4) == 1.0
    assert lr_factor(39, 10, 2, 4) == 1.0
    assert lr_factor(40, 10, 2, 4) == pytest.approx(0.1)
    assert lr_factor(85, 10, 2, 4) == pytest.approx(0.01)


def test_end_to_end_training(tmp_path, monkeypatch):
    files = tiny_demo(tmp_path / "data")
    out = tmp_path / "run"
    seen = []
    real_step = torch.optim.SGD.step

    def recording_step(self, *a, **k):
        seen.append([(g["name"], g["lr"], g["momentum"], g["weight_decay"]) for g in self.param_groups])
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.SGD, "step", recording_step)
    losses = []

    def recording(loss):
        losses.append(loss.item())
        return loss

    wrap_training_loss(monkeypatch, recording)
    train_main.main(train_argv(files, out, "--total_epoch", "3", "--lr", "0.02"))
    ipe = math.ceil(48 / 8)
    assert len(seen) == 3 * ipe
    for t, groups in enumerate(seen):
        (n0, lr0, m0, wd0), (n1, lr1, m1, wd1) = groups
        assert (n0, n1) == ("backbone", "head") and m0 == m1 == 0.9 and wd0 == wd1 == 1e-4
        assert lr0 == pytest.approx(spec_lr(0.02, t, ipe, 1, 1), abs=1e-12)
        assert lr1 == pytest.approx(spec_lr(0.2, t, ipe, 1, 1), abs=1e-12)  # head at 10x
    assert sum(losses[-ipe:]) / ipe < sum(losses[:ipe]) / ipe
    for i in (1, 2, 3):
        assert (out / f"epoch_{i}.pth").is_file()
    assert (out / "best.pth").is_file() and (out / "train_state.pth").is_file()
    log = read_log(out)
    assert [e["epoch"] for e in log] == [1, 2, 3]
    # the authors' layout, readable by their tools
    sd = torch.load(out / "epoch_3.pth", weights_only=True)
    assert "classifier.multi_head.0.head.weight" in sd and "small_cnn.stem.0.weight" in sd
    best = max(log, key=lambda e: e["mAP"])
    got, _ = val_map(files, out / "best.pth")
    assert got == pytest.approx(best["mAP"], abs=0.006)


def test_gap_baseline_lr_is_uniform(tmp_path, monkeypatch):
    files = tiny_demo(tmp_path / "data", num_train=16, num_test=8)
    seen = []
    real_step = torch.optim.SGD.step
    monkeypatch.setattr(torch.optim.SGD, "step",
                        lambda self, *a, **k: (seen.append([g["lr"] for g in self.param_groups]),
                                               real_step(self, *a, **k))[1])
    train_main.main(train_argv(files, tmp_path / "run", "--head", "gap", "--total_epoch", "1",
                               "--warmup_epoch", "0"))
    assert seen and all(a == b == 0.05 for a, b in seen)


def test_new_run_never_overwrites(tmp_path):
    files = tiny_demo(tmp_path / "data", num_train=16, num_test=8)
    out = tmp_path / "run"
    train_main.main(train_argv(files, out, "--total_epoch", "1"))
    before = (out / "epoch_1.pth").read_bytes()
    train_main.main(train_argv(files, out, "--total_epoch", "1", "--seed", "5"))
    assert (out / "epoch_1.pth").read_bytes() == before
    assert (tmp_path / "run_2" / "epoch_1.pth").is_file()


def test_nan_loss_stops_with_epoch_and_step(tmp_path, monkeypatch):
    files = tiny_demo(tmp_path / "data", num_train=16, num_test=8)
    out = tmp_path / "run"
    calls = {"n": 0}

    def poisoned(loss):
        calls["n"] += 1
        return loss * float("nan") if calls["n"] == 3 else loss

    wrap_training_loss(monkeypatch, poisoned)
    with pytest.raises(SystemExit) as e:
        train_main.main(train_argv(files, out, "--total_epoch", "2"))
    assert "epoch 2, step 1" in str(e.value.code) and "nan" in str(e.value.code)
    good = torch.load(out / "epoch_1.pth", weights_only=True)
    assert all(torch.isfinite(v).all() for v in good.values() if v.is_floating_point())
    state = torch.load(out / "train_state.pth", weights_only=True)
    assert state["epoch"] == 1 and not (out / "epoch_2.pth").exists()


def test_ema_best_holds_the_weights_that_scored(tmp_path):
    files = tiny_demo(tmp_path / "data", num_train=32, num_test=16)
    out = tmp_path / "run"
    train_main.main(train_argv(files, out, "--ema", "0.9"))
    log = read_log(out)
    assert all("ema_mAP" in e for e in log)
    best = log[-1]
    scores = {(e["epoch"], "model"): e["mAP"] for e in log}
    scores.update({(e["epoch"], "ema"): e["ema_mAP"] for e in log})
    assert best["best_mAP"] == pytest.approx(max(scores.values()))
    got, _ = val_map(files, out / "best.pth")
    assert got == pytest.approx(best["best_mAP"], abs=0.006)


@pytest.mark.parametrize("amp,extra,recipe", [("off", [], "paper"), ("bf16", ["--loss", "asl"], "paper"),
                                              ("off", ["--cutout", "0.5"], "strong")])
def test_sigkill_mid_epoch_then_resume_gives_identical_weights(tmp_path, amp, extra, recipe):
    """float32 and bf16 autocast on CPU are both deterministic (same kernels, same thread count), so a
    resumed run must end with exactly the weights of an uninterrupted one in either precision, with a
    non-default loss, and with the strong recipe (AdamW, one-cycle, EMA, ASL, RandAugment, and the Cutout
    the demo turns off, typed); the options typed at the start come back from args.json."""
    files = tiny_demo(tmp_path / "data", num_train=160, num_test=8)

    def argv(out, *more):
        return train_argv(files, out, "--batch_size", "4", "--state_every", "1", "--amp", amp, *more,
                          recipe=recipe)

    r = run_py("main.py", *argv(tmp_path / "full", *extra), fresh=True)  # same thread count as the killed run
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "killed"
    killed_at = kill_mid_epoch(argv(out, *extra), out / "train_state.pth")
    assert killed_at is not None, "training finished before it could be killed"
    assert not (out / "epoch_2.pth").exists()
    resumed = [a for a in argv(out) if a not in ("--recipe", "strong")]  # recipe and loss: from the record
    r = run_py("main.py", *resumed, "--resume", fresh=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed from" in r.stdout
    a = torch.load(tmp_path / "full" / "epoch_2.pth", weights_only=True)
    b = torch.load(out / "epoch_2.pth", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log = read_log(out)
    assert [e["epoch"] for e in log] == [1, 2]
    assert log[-1]["loss"] == ("asl" if "--loss" in extra or recipe == "strong" else "bce")
    if recipe == "strong":  # the EMA was restored too: its scores match the uninterrupted run's
        assert [e["ema_mAP"] for e in log] == [e["ema_mAP"] for e in read_log(tmp_path / "full")]
    # the per-iteration log: every step once, with the uninterrupted run's losses
    steps_full = (tmp_path / "full" / "steps.csv").read_text().splitlines()
    steps_resumed = (out / "steps.csv").read_text().splitlines()
    assert steps_resumed == steps_full and len(steps_full) == 1 + 2 * 40


def test_resume_without_state_is_clear(tmp_path):
    files = tiny_demo(tmp_path / "data", num_train=16, num_test=8)
    with pytest.raises(SystemExit) as e:
        train_main.main(train_argv(files, tmp_path / "nothing", "--resume"))
    assert "no training state" in str(e.value.code)


def test_torchrun_two_processes_match_single_process_eval(tmp_path):
    files = tiny_demo(tmp_path / "data", num_train=30, num_test=13)  # odd sizes: no padding allowed
    out = tmp_path / "ddp"
    r = run_py("-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
               "main.py", *train_argv(files, out, "--total_epoch", "1"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Grad strides do not match bucket view strides" not in r.stderr  # channels-last head weights (runtime)
    logged = read_log(out)[0]["mAP"]
    single, _ = val_map(files, out / "best.pth")
    assert single == pytest.approx(logged, abs=0.006)
    r = run_py("-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29518",
               "val.py", "--dataset", "demo", "--test_json", files["test"], "--classes", files["classes"],
               "--img_size", "32", "--num_workers", "0", "--load_from", str(out / "best.pth"))
    assert r.returncode == 0, r.stderr[-3000:]
    _, single_out = val_map(files, out / "best.pth")
    table = lambda s: s[s.index("mAP:"):]  # noqa: E731
    assert table(r.stdout) == table(single_out)


def test_keep_epochs_keeps_exactly_the_last_n_and_never_a_file_it_did_not_write(tmp_path):
    files = tiny_demo(tmp_path / "data", num_train=16, num_test=8)
    out = tmp_path / "run"
    train_main.main(train_argv(files, out, "--keep_epochs", "2", "--total_epoch", "3"))
    kept = sorted(p.name for p in out.glob("*.pth"))
    assert kept == ["best.pth", "epoch_2.pth", "epoch_3.pth", "train_state.pth"]
    assert json.loads((out / "args.json").read_text())["keep_epochs"] == 2
    (out / "epoch_1.pth").write_bytes(b"a file of the user's, not the run's")
    train_main.main(train_argv(files, out, "--total_epoch", "5", "--resume", str(out)))  # the record keeps 2
    kept = sorted(p.name for p in out.glob("*.pth"))
    assert kept == ["best.pth", "epoch_1.pth", "epoch_4.pth", "epoch_5.pth", "train_state.pth"]
    assert (out / "epoch_1.pth").read_bytes() == b"a file of the user's, not the run's"
    state = torch.load(out / "train_state.pth", weights_only=True)
    assert state["epoch_files"] == [4, 5]
    every = tmp_path / "every"
    train_main.main(train_argv(files, every, "--total_epoch", "3"))  # the default: every epoch stays
    assert sorted(p.name for p in every.glob("epoch_*.pth")) == ["epoch_1.pth", "epoch_2.pth", "epoch_3.pth"]
    r = run_py("main.py", *train_argv(files, tmp_path / "x", "--keep_epochs", "0"))
    assert r.returncode == 2 and "--keep_epochs: expected 1 or more" in r.stderr
