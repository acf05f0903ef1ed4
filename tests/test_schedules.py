"""Schedules that cannot silently do nothing, and --scheduler cosine: its values against the formula written
here, its warm-up, its floor, and a resumed run's learning rates against an uninterrupted run's."""
import csv
import json
import math

import pytest
import torch
import torch.nn as nn
from PIL import Image

import main as train_main
from helpers import kill_mid_epoch, run_py, tiny_demo, train_argv
from pipeline.errors import ConfigError
from pipeline.training.optim import cosine_factor, make_schedule, step_factor
from utils.configuration.option_help import describe_options
from utils.configuration.options import BY_NAME


def cosine_by_hand(t, total, warm, floor):
    """The schedule as the README states it: t / warm during the warm-up, then
    floor + (1 - floor) * (1 + cos(pi * progress)) / 2 with progress 0 at the warm-up's end, 1 at the last step."""
    if t < warm:
        return t / warm
    progress = (t - warm) / (total - 1 - warm)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def schedule(name, ipe, total_epochs, warmup, floor=0.0, decay_every=4):
    return make_schedule(name, iters_per_epoch=ipe, total_epochs=total_epochs, warmup_epochs=warmup,
                         decay_every=decay_every, onecycle_peak=0.2, lr_floor=floor)


def test_cosine_at_chosen_steps_by_hand():
    f = schedule("cosine", ipe=10, total_epochs=5, warmup=0.9, floor=0.1)  # 50 steps, warm-up 9, decay over 40
    assert f(0) == 0.0                                   # the warm-up starts from 0, as the paper's
    assert f(3) == pytest.approx(3 / 9)
    assert f(9) == pytest.approx(1.0)                    # the peak, where the warm-up ends
    assert f(19) == pytest.approx(0.1 + 0.9 * (1 + math.sqrt(0.5)) / 2)  # a quarter of the way: cos(pi/4)
    assert f(29) == pytest.approx(0.55)                  # half-way: half-way between peak and floor
    assert f(39) == pytest.approx(0.1 + 0.9 * (1 - math.sqrt(0.5)) / 2)
    assert f(49) == pytest.approx(0.1)                   # the floor, at the last step
    for t in range(50):
        assert f(t) == pytest.approx(cosine_by_hand(t, 50, 9, 0.1), abs=1e-12)


@pytest.mark.parametrize("ipe,epochs,warmup,floor", [(10, 5, 0.9, 0.1), (7, 3, 0.5, 0.0), (3, 4, 0, 0.25),
                                                     (100, 2, 0.37, 0.0)])
def test_cosine_warm_up_then_decay_to_the_floor_at_the_last_step(ipe, epochs, warmup, floor):
    f = schedule("cosine", ipe, epochs, warmup, floor)
    total, warm = ipe * epochs, warmup * ipe
    lrs = [f(t) for t in range(total)]
    ramp = [t for t in range(total) if t < warm]
    assert [lrs[t] for t in ramp] == pytest.approx([t / warm for t in ramp])  # linear from 0 ...
    assert [lrs[t] for t in ramp] == [step_factor(t, ipe, warmup, 100) for t in ramp]  # ... the paper's own ramp
    after = lrs[len(ramp):]
    assert all(a > b for a, b in zip(after, after[1:]))  # then only down, per iteration
    assert lrs[-1] == pytest.approx(floor, abs=1e-12) and min(lrs[len(ramp):]) >= floor - 1e-12
    assert max(lrs) <= 1.0 + 1e-12
    assert lrs == pytest.approx([cosine_by_hand(t, total, warm, floor) for t in range(total)])


def test_cosine_is_torchs_cosine_annealing_after_the_warm_up():
    """After a whole-step warm-up, torch's CosineAnnealingLR (T_max = the steps left after the peak, eta_min =
    the floor) gives the same curve."""
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    warm, total, floor = 12, 60, 0.05
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - 1 - warm, eta_min=floor)
    theirs = []
    for _ in range(warm, total):
        theirs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    ours = [cosine_factor(t, total, warm, floor) for t in range(warm, total)]
    assert ours == pytest.approx(theirs, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("argv,msg", [
    (["--total_epoch", "1"], "--warmup_epoch 2 (--recipe paper's) is longer than the run (--total_epoch 1)"),
    (["--dataset", "demo", "--total_epoch", "2", "--warmup_epoch", "3"],
     "--warmup_epoch 3 is longer than the run (--total_epoch 2)"),
    (["--scheduler", "cosine", "--total_epoch", "2"],
     "--warmup_epoch 2 (--recipe paper's) is not shorter than the run (--total_epoch 2)"),
    (["--dataset", "demo", "--scheduler", "cosine", "--total_epoch", "1"],
     "--warmup_epoch 1 (--recipe paper's on --dataset demo) is not shorter than the run"),
    (["--lr", "0"], "--lr must be a positive number (got 0.0)"),
    (["--head_lr_mult", "0"], "--head_lr_mult must be a positive number"),
    (["--scheduler", "cosine", "--lr_floor", "1.5"], "--lr_floor must be a fraction of the LR in [0, 1]"),
    (["--lr_floor", "0.1"],
     "--lr_floor applies to --scheduler cosine, but this run uses --scheduler step (--recipe paper's)"),
    (["--scheduler", "cosine", "--decay_every", "2"],  # typed: no recipe is blamed
     "--decay_every applies to --scheduler step, but this run uses --scheduler cosine\n"),
    (["--scheduler", "onecycle", "--warmup_epoch", "1"], "--warmup_epoch applies to --scheduler step or cosine"),
])
def test_a_schedule_that_cannot_train_as_asked_is_one_line_before_anything_runs(argv, msg, capsys):
    with pytest.raises(SystemExit) as e:
        train_main.main(argv)
    text = str(e.value.code) if isinstance(e.value.code, str) else capsys.readouterr().err
    assert msg in text.strip() + "\n" and len(text.strip().splitlines()) == 1


def test_what_stays_allowed():
    a = train_main.get_args(["--scheduler", "cosine", "--total_epoch", "3", "--lr_floor", "0.1"])
    assert (a.scheduler, a.warmup_epoch, a.lr_floor) == ("cosine", 2.0, 0.1)
    assert train_main.get_args(["--total_epoch", "2"]).warmup_epoch == 2.0  # a warm-up as long as the run: it trains
    assert train_main.get_args(["--total_epoch", "1", "--warmup_epoch", "0"]).warmup_epoch == 0.0
    assert train_main.get_args(["--recipe", "strong", "--total_epoch", "1"]).scheduler == "onecycle"


@pytest.mark.parametrize("name,ipe,epochs,warmup,msg", [
    ("step", 1, 1, 0.5, "this run has 1 training step (1 per epoch x --total_epoch 1; a smaller --batch_size gives "
                        "more): --warmup_epoch 0.5 starts it at learning rate 0"),
    ("onecycle", 1, 1, 0, "--scheduler onecycle would train it at the curve's end, 1/250000 of --lr"),
    ("cosine", 1, 2, 1.5, "--warmup_epoch 1.5 lasts 1.5 of them, leaving none between its end and the last step"),
    ("cosine", 10, 1, 0.95, "--warmup_epoch 0.95 lasts 9.5 of them"),  # ends at step 10: no step before the last
    ("step", 2, 1, 1.5, "--warmup_epoch 1.5 is longer than the run (--total_epoch 1)"),
])
def test_with_the_steps_known_a_schedule_that_trains_nothing_is_refused(name, ipe, epochs, warmup, msg):
    with pytest.raises(ConfigError) as e:
        schedule(name, ipe, epochs, warmup)
    assert msg in str(e.value)
    # the smallest runs that do train
    assert schedule("step", 1, 1, 0)(0) == 1.0
    assert [schedule("step", 2, 1, 1)(t) for t in (0, 1)] == [0.0, 0.5]
    f = schedule("cosine", 10, 1, 0.8)  # warm-up 8 steps, peak at 8, floor at 9
    assert (f(8), f(9)) == (1.0, 0.0)


def make_photos(folder, n):
    """``n`` small photos and a labels.csv, as a user's own folder would hold them."""
    folder.mkdir()
    lines = []
    for i in range(n):
        colour = (255 * (i % 2), 128, 255 * (i % 3 == 0))
        Image.new("RGB", (40, 30), colour).save(folder / f"p{i}.jpg")
        lines.append(f"p{i}.jpg,{'cat' if i % 2 else 'dog'}{';sofa' if i % 3 == 0 else ''}")
    (folder.parent / "labels.csv").write_text("\n".join(lines) + "\n")


def test_the_readme_custom_command_on_20_photos_for_1_epoch_is_refused_not_run_at_lr_0(tmp_path):
    """The issue's first run: 20 photos, 16 for training in one batch, one epoch. Nothing trains at LR 0, no run
    folder is made, and the line names the flags to change."""
    make_photos(tmp_path / "photos", 20)
    r = run_py("utils/prepare/prepare_custom.py", "--img_dir", tmp_path / "photos", "--labels", tmp_path / "labels.csv",
               "--out_dir", tmp_path / "mine", "--test_split", "0.2")
    assert r.returncode == 0, r.stderr
    custom = ["--train_json", tmp_path / "mine" / "train.json", "--test_json", tmp_path / "mine" / "test.json",
              "--model", "small_cnn", "--pretrained", "none", "--img_size", "32", "--num_workers", "0",
              "--output_dir", tmp_path / "run", "--total_epoch", "1"]
    r = run_py("main.py", *custom)
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        "error: --warmup_epoch 2 (--recipe paper's) is longer than the run (--total_epoch 1): the learning rate ramps "
        "from 0 over the warm-up and would never reach --lr; shorten it (e.g. --warmup_epoch 0.1) or raise "
        "--total_epoch"]
    r = run_py("main.py", *custom, "--warmup_epoch", "1")  # 16 images, batch 16: one step, at LR 0
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "this run has 1 training step" in r.stderr and "--warmup_epoch 1 starts it at learning rate 0" in r.stderr
    assert not (tmp_path / "run").exists()
    r = run_py("main.py", *custom, "--warmup_epoch", "0")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "run" / "steps.csv")))
    assert [float(row["lr_backbone"]) for row in rows] == [0.01]  # it trained, at the LR asked for
    # ... and the header says that the step schedule does not decay in a run this short
    assert "decay_every 4 (no decay in this run)" in " ".join(r.stdout.split())


def test_the_header_says_when_a_step_schedule_never_decays():
    values = dict(optimizer="sgd", scheduler="step", lr=0.01, warmup_epoch=1.0, decay_every=4, total_epoch=4)
    assert "decay_every 4 (no decay in this run)" in describe_options(values, BY_NAME)
    assert "decay_every 4," in describe_options(dict(values, total_epoch=5), BY_NAME)  # x0.1 after epoch 4 of 5
    assert "decay_every" not in describe_options(dict(values, scheduler="cosine", lr_floor=0.0), BY_NAME)
    assert "lr_floor 0.0" in describe_options(dict(values, scheduler="cosine", lr_floor=0.0), BY_NAME)


def lrs_of(folder):
    return [(int(r["global_step"]), float(r["lr_backbone"]), float(r["lr_head"]))
            for r in csv.DictReader(open(folder / "steps.csv"))]


def test_cosine_resumed_after_sigkill_has_the_uninterrupted_runs_learning_rates(tmp_path):
    files = tiny_demo(tmp_path / "data", num_train=80, num_test=8)

    def cosine_argv(out):  # train_argv's schedule flags are the step's: this run's are cosine's
        a = train_argv(files, out, "--batch_size", "4", "--state_every", "1", "--scheduler", "cosine",
                       "--warmup_epoch", "0.5")
        i = a.index("--decay_every")
        return a[:i] + a[i + 2:]

    r = run_py("main.py", *cosine_argv(tmp_path / "full"), fresh=True)
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "killed"
    assert kill_mid_epoch(cosine_argv(out), out / "train_state.pth") is not None, "finished before the kill"
    r = run_py("main.py", *cosine_argv(out), "--resume", fresh=True)
    assert r.returncode == 0, r.stderr[-2000:]
    full, resumed = lrs_of(tmp_path / "full"), lrs_of(out)
    assert resumed == full and [s for s, _, _ in full] == list(range(1, 41))  # steps.csv counts steps done
    # ... and they are the formula's: lr 0.05 (the demo's), head x10, warm-up 10 steps, floor 0 at the 40th
    for done, lr, lr_head in full:
        assert lr == pytest.approx(0.05 * cosine_by_hand(done - 1, 40, 10, 0.0), rel=1e-5, abs=1e-9)
        assert lr_head == pytest.approx(10 * lr, rel=1e-5, abs=1e-9)
    assert full[-1][1] == 0.0
    # its curve spans the recorded epochs: --total_epoch cannot change on resume
    r = run_py("main.py", *cosine_argv(out), "--total_epoch", "3", "--resume", str(out))
    assert r.returncode == 1 and "--scheduler cosine" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_lr_floor_reaches_the_last_step(tmp_path):
    files = tiny_demo(tmp_path / "data", num_train=16, num_test=4)
    a = train_argv(files, tmp_path / "run", "--scheduler", "cosine", "--lr_floor", "0.2", "--warmup_epoch", "0.5")
    i = a.index("--decay_every")
    r = run_py("main.py", *a[:i], *a[i + 2:])
    assert r.returncode == 0, r.stderr[-2000:]
    steps = lrs_of(tmp_path / "run")  # 2 epochs of 2 steps: warm-up 1 step, then 0.05 down to 0.2 x 0.05
    assert [lr for _, lr, _ in steps] == pytest.approx([0.0, 0.05, 0.05 * (0.2 + 0.8 * 0.5), 0.05 * 0.2])


def test_runs_recorded_before_lr_floor_resume_and_repeat(tmp_path):
    """args.json of runs from before --lr_floor has no such key: --resume and --config still work."""
    files = tiny_demo(tmp_path / "data", num_train=16, num_test=4)
    out = tmp_path / "run"
    r = run_py("main.py", *train_argv(files, out, "--total_epoch", "1"))
    assert r.returncode == 0, r.stderr[-2000:]
    record = json.loads((out / "args.json").read_text())
    assert record["lr_floor"] == 0.0
    del record["lr_floor"]
    (out / "args.json").write_text(json.dumps(record))
    r = run_py("main.py", *train_argv(files, out, "--total_epoch", "2"), "--resume", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming" in r.stdout and json.loads((out / "args.json").read_text())["total_epoch"] == 2
    r = run_py("main.py", "--config", out, "--seed", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "run_2" / "args.json").read_text())["lr_floor"] == 0.0


def test_an_option_that_cannot_apply_to_a_resumed_runs_value_names_the_record(tmp_path, capsys):
    files = tiny_demo(tmp_path / "data", num_train=16, num_test=4)
    run = tmp_path / "run"
    argv = train_argv(files, run, "--total_epoch", "1", "--scheduler", "cosine", "--warmup_epoch", "0")
    del argv[argv.index("--decay_every"):argv.index("--decay_every") + 2]  # (the helper's, for step)
    train_main.main(argv)
    with pytest.raises(SystemExit) as e:
        train_main.main(train_argv(files, run, "--total_epoch", "1", "--resume", str(run), "--decay_every", "2"))
    text = str(e.value.code) if isinstance(e.value.code, str) else capsys.readouterr().err
    assert "--decay_every applies to --scheduler step, but this run uses --scheduler cosine (the resumed run's " \
           "record)" in text  # cosine was typed when the run started: no recipe's value
