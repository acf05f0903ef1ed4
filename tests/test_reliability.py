"""Nothing a user owns is lost, and every mistake gets one clear line.

Fault classes covered here (each test reproduces the fault first, then checks the behaviour):

| fault | behaviour |
| --- | --- |
| bare --resume after a second run | continues the one unfinished run, never a finished one; refuses when ambiguous |
| --resume of a finished run | refused unless --total_epoch is raised |
| --resume after the --pretrained file moved | resumes from the state alone, the same weights as with the file |
| --resume with a changed run-defining flag | one line naming the flag and both values; safe flags applied and recorded |
| target value outside the file's convention, empty target list | one line naming file, record, class, value |
| 16-bit PNG, float TIFF | scaled to 8 bits; out-of-range values refused with one line |
| NaN/inf weights or BatchNorm statistics | nothing diverged is saved; the message says whether a good checkpoint exists |
| every image unreadable with --skip_bad_images | one line, no "trained" model saved |
| preparation script over existing files | refused unless --force, files unchanged |
| error inside a DataLoader worker | the same one line as without workers |
| bad flag values | one line at parse time |
| output dir is a file, full disk, trailing slash, stale temporaries | one line each; nothing saved is damaged |
| random bytes / GAP checkpoint for a CSRA model | "not a PyTorch checkpoint" / "checkpoint has a GAP head, --head is csra" |
| JSON with a byte-order mark / Latin-1 text | read / one line naming the file |
| demo.py: missing path, empty folder, same names in two folders | one line / one line / no heatmap overwritten |
| Ctrl-C during training | "interrupted; continue with the same command plus --resume", exit 130 |
"""
import errno
import json
import os
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

import demo as demo_main
import export as export_main
import main as train_main
import val as val_main
from conftest import ROOT
from helpers import run_py, tiny_demo, train_argv, wrap_training_loss
from pipeline.data.dataset import DataError, ImageTransform, MultiLabelDataset
from pipeline.errors import CheckpointError
from pipeline.weights.checkpoint import safe_load


def one_line_exit(fn, *args):
    with pytest.raises(SystemExit) as e:
        fn(*args)
    msg = str(e.value.code)
    assert msg.startswith("error: ") and "\n" not in msg, msg
    return msg


def nan_at_call(monkeypatch, n):
    """Make the n-th loss NaN (a run that stops part-way, leaving an unfinished state)."""
    calls = {"n": 0}

    def poisoned(loss):
        calls["n"] += 1
        return loss * float("nan") if calls["n"] == n else loss
    wrap_training_loss(monkeypatch, poisoned)


@pytest.fixture
def files(tmp_path):
    return tiny_demo(tmp_path / "data", num_train=16, num_test=8)


# --- 1, 2: resume the right run with the right options ----------------------------------------
def test_bare_resume_continues_the_unfinished_run_not_the_finished_one(tmp_path, files, monkeypatch):
    out = tmp_path / "run"
    train_main.main(train_argv(files, out, "--total_epoch", "1"))  # finished
    before = {p: (out / p).read_bytes() for p in ("best.pth", "train_state.pth", "log.jsonl", "epoch_1.pth")}
    with monkeypatch.context() as m:
        nan_at_call(m, 3)  # epoch 1 of 2 has 2 steps: stops at epoch 2, step 1
        one_line_exit(train_main.main, train_argv(files, out, "--total_epoch", "2"))
    assert torch.load(tmp_path / "run_2" / "train_state.pth", weights_only=True)["epoch"] == 1
    train_main.main(train_argv(files, out, "--total_epoch", "2", "--resume"))
    assert (tmp_path / "run_2" / "epoch_2.pth").is_file()
    assert {p: (out / p).read_bytes() for p in before} == before  # the finished run was not touched
    msg = one_line_exit(train_main.main, train_argv(files, out, "--total_epoch", "2", "--resume"))
    assert "no training state of an unfinished run" in msg and "run_2 (2/2 epochs)" in msg
    msg = one_line_exit(train_main.main, train_argv(files, out, "--resume", str(out), "--total_epoch", "1"))
    assert "is finished (1 of 1 epochs)" in msg and "--total_epoch" in msg
    train_main.main(train_argv(files, out, "--resume", str(out), "--total_epoch", "2"))  # raised: continues
    assert (out / "epoch_2.pth").is_file()
    recorded = json.loads((out / "args.json").read_text())
    assert recorded["total_epoch"] == 2 and recorded["resume_changes"] == ["--total_epoch 1 -> 2"]


def test_two_unfinished_runs_are_ambiguous(tmp_path, files, monkeypatch):
    out = tmp_path / "run"
    for _ in range(2):
        with monkeypatch.context() as m:
            nan_at_call(m, 3)
            one_line_exit(train_main.main, train_argv(files, out, "--total_epoch", "2"))
    msg = one_line_exit(train_main.main, train_argv(files, out, "--total_epoch", "2", "--resume"))
    assert "several unfinished runs" in msg and "run (1/2 epochs)" in msg and "run_2 (1/2 epochs)" in msg


def test_resume_keeps_the_recorded_options(tmp_path, files, monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        nan_at_call(m, 3)
        msg = one_line_exit(train_main.main, train_argv(files, out, "--total_epoch", "2", "--lr", "0.02"))
    assert "last good checkpoint kept" in msg and "epoch_1.pth" in msg
    msg = one_line_exit(train_main.main, train_argv(files, out, "--total_epoch", "2", "--lr", "0.5", "--resume"))
    assert "--lr is 0.5 but the run in" in msg and "was started with 0.02" in msg
    other = tiny_demo(tmp_path / "other", num_train=8, num_test=8, seed=4)
    argv = train_argv(files, out, "--total_epoch", "2", "--resume")
    argv[argv.index("--train_json") + 1] = other["train"]
    msg = one_line_exit(train_main.main, argv)
    assert "--train_json is" in msg and files["train"] in msg
    # not given: the recorded lr is used (0.02), safe flags are applied
    seen = []
    real_step = torch.optim.SGD.step
    monkeypatch.setattr(torch.optim.SGD, "step",
                        lambda self, *a, **k: (seen.append(self.param_groups[0]["base_lr"]), real_step(self, *a, **k))[1])
    argv = train_argv(files, out, "--total_epoch", "2", "--resume", "--print_freq", "7")
    argv.remove("--lr") if "--lr" in argv else None
    train_main.main(argv)
    assert seen and set(seen) == {0.02}
    assert "--print_freq 100 -> 7" in json.loads((out / "args.json").read_text())["resume_changes"]


class Killed(BaseException):
    """Stands for SIGKILL in-process: nothing catches it, nothing after it runs."""


def kill_points(monkeypatch, point):
    """Raise Killed at one moment around the end of epoch 1's saves: before its checkpoint, before or after its
    log.jsonl line, half-way through writing its training state (the temporary file left behind), after it."""
    import trainer
    import utils.runs.loggers
    import utils.runs.train_state
    real_save, real_log, real_state = trainer.save_torch_atomic, utils.runs.loggers.EpochLog.epoch, \
        utils.runs.train_state.save_torch_atomic

    def save(obj, path):
        if point == "before checkpoint" and path.endswith("epoch_1.pth"):
            raise Killed
        real_save(obj, path)

    def log(self, entry):
        if point == "before log line" and entry["epoch"] == 1:
            raise Killed
        real_log(self, entry)
        if point == "after log line" and entry["epoch"] == 1:
            raise Killed

    def state(obj, path):
        if obj["epoch"] == 1 and obj["iter"] == 0:
            if point == "writing state":
                with open(os.path.join(os.path.dirname(path), f".train_state.pth.tmp{os.getpid()}"), "wb") as f:
                    f.write(b"PK\x03\x04 half")
                raise Killed
            real_state(obj, path)
            if point == "after state":
                raise Killed
            return
        real_state(obj, path)
    monkeypatch.setattr(trainer, "save_torch_atomic", save)
    monkeypatch.setattr(utils.runs.loggers.EpochLog, "epoch", log)
    monkeypatch.setattr(utils.runs.train_state, "save_torch_atomic", state)


@pytest.mark.parametrize("point", ["before checkpoint", "before log line", "after log line", "writing state",
                                   "after state"])
def test_a_run_killed_around_the_end_of_epoch_saves_logs_each_epoch_once(tmp_path, files, monkeypatch, point):
    """A mid-epoch state exists (--state_every 1), so the resume may start in epoch 1 (epoch 0 done): the log's
    lines after that state must go, also when none of its epochs had finished (it kept [1, 1, 2] before)."""
    argv = train_argv(files, tmp_path / "run", "--total_epoch", "2", "--state_every", "1", "--ema", "0.9")
    with monkeypatch.context() as m:
        kill_points(m, point)
        with pytest.raises(Killed):
            train_main.main(argv)
    train_main.main(argv + ["--resume", str(tmp_path / "run")])
    log = [json.loads(line) for line in open(tmp_path / "run" / "log.jsonl")]
    assert [e["epoch"] for e in log] == [1, 2] and "final" in log[-1] and "final" not in log[0]
    train_main.main(train_argv(files, tmp_path / "whole", "--total_epoch", "2", "--state_every", "1", "--ema", "0.9"))
    for name in ("epoch_2.pth", "best.pth"):
        a, b = (torch.load(tmp_path / d / name, weights_only=True) for d in ("run", "whole"))
        assert all(torch.equal(a[k], b[k]) for k in b), (point, name)
    steps = (tmp_path / "run" / "steps.csv").read_text().splitlines()[1:]
    assert [int(ln.split(",")[0]) for ln in steps] == list(range(1, 5))  # each step once


def test_a_run_killed_between_new_best_weights_and_its_state_resumes_with_the_states_best(tmp_path, files,
                                                                                          monkeypatch):
    """best.pth holds the weights the training state names as the best: a run killed after an epoch's new best
    but before the state that names it redoes that epoch, which (on a GPU, or on another thread count) may
    score lower; the result then is the state's best epoch, its weights and its test figures."""
    import trainer
    import utils.runs.train_state
    maps = iter([50.0, 80.0, 40.0])  # validation mAP: epoch 1, epoch 2 (killed before its state), epoch 2 again
    real_score, real_state = trainer.Trainer.score, utils.runs.train_state.save_torch_atomic

    def score(self, net, dataset, what, source, epoch):
        scored = real_score(self, net, dataset, what, source, epoch)
        if what == "validation" and source == "model":
            scored.report.map = next(maps)
        return scored

    def state(obj, path):
        if obj["epoch"] == 2 and not killed:
            killed.append(path)
            raise Killed
        real_state(obj, path)
    killed = []
    monkeypatch.setattr(trainer.Trainer, "score", score)
    monkeypatch.setattr(utils.runs.train_state, "save_torch_atomic", state)
    run = tmp_path / "run"
    argv = train_argv(files, run, "--val_split", "0.25")
    with pytest.raises(Killed):
        train_main.main(argv)
    assert (run / ".best_epoch2.pth.pending").exists()  # epoch 2's weights, named by no state
    train_main.main(argv + ["--resume", str(run)])
    final = [json.loads(line) for line in open(run / "log.jsonl")][-1]["final"]
    assert final["epoch"] == 1 and final["val_mAP"] == 50.0
    best, first = (torch.load(run / n, weights_only=True) for n in ("best.pth", "epoch_1.pth"))
    assert all(torch.equal(best[k], first[k]) for k in first)  # not the killed attempt's epoch 2
    assert not [n for n in os.listdir(run) if n.endswith(".pending")]


# --- 3: labels ------------------------------------------------------------------------------------
def write_json(path, obj, encoding="utf-8", bom=False):
    text = json.dumps(obj)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode(encoding))
    return str(path)


@pytest.mark.parametrize("train,target,fragment", [
    (True, [0, 2], "class 1 has label 2; this file may hold 0, 1"),
    (True, [-1, 1], "class 0 has label -1; this file may hold 0, 1"),
    (False, [1, 5], "class 1 has label 5; this file may hold -1, 0, 1, 99"),
    (True, [], "empty target list"),
])
def test_label_values_outside_the_convention(tmp_path, train, target, fragment):
    img = tmp_path / "a.jpg"
    Image.new("RGB", (8, 8)).save(img)
    path = write_json(tmp_path / "labels.json", [{"img_path": str(img), "target": [0, 1] if target else [1]},
                                                 {"img_path": str(img), "target": target}])
    with pytest.raises(DataError) as e:
        MultiLabelDataset(path, ImageTransform(8, train=train))
    assert str(e.value).startswith(path) and "record 1" in str(e.value) and fragment in str(e.value)


# --- 4: images that are not 8-bit -----------------------------------------------------------------
def dataset_of(tmp_path, img_path):
    path = write_json(tmp_path / "one.json", [{"img_path": str(img_path), "target": [1]}])
    return MultiLabelDataset(path, ImageTransform(16, train=False))


def test_16_bit_png_is_scaled_not_white(tmp_path):
    ramp = (np.arange(16 * 16, dtype=np.uint32).reshape(16, 16) * 256).astype(np.uint16)  # 0 .. 65280
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    x = dataset_of(tmp_path, tmp_path / "deep.png")[0][0]
    assert x.shape == (3, 16, 16) and int(x.max()) - int(x.min()) > 200
    want = np.rint(ramp.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(x[0].numpy(), want)


def test_float_tiff_in_unit_range_is_scaled_and_wild_values_refused(tmp_path):
    ramp = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)
    Image.fromarray(ramp, mode="F").save(tmp_path / "unit.tif")
    x = dataset_of(tmp_path, tmp_path / "unit.tif")[0][0]
    assert int(x.min()) == 0 and int(x.max()) == 255
    Image.fromarray(ramp * 1e6, mode="F").save(tmp_path / "wild.tif")
    with pytest.raises(DataError, match="cannot map them to 8 bits"):
        dataset_of(tmp_path, tmp_path / "wild.tif")[0]


# --- 5, 6: diverged states and unreadable sets ------------------------------------------------------
def test_nan_batchnorm_statistics_are_never_saved(tmp_path, files, monkeypatch):
    import engine
    real = engine.train_step

    def corrupting(model, *a, **k):
        loss = real(model, *a, **k)
        net = model.module if hasattr(model, "module") else model
        net.small_cnn.stem[1].running_var.fill_(float("nan"))  # the loss stays finite
        return loss
    monkeypatch.setattr(engine, "train_step", corrupting)
    out = tmp_path / "run"
    msg = one_line_exit(train_main.main, train_argv(files, out, "--state_every", "1"))
    assert "weights became NaN or infinite" in msg and "running_var" in msg and "no checkpoint had been saved" in msg
    assert not (out / "train_state.pth").exists() and not (out / "epoch_1.pth").exists()


def test_nan_loss_in_the_first_epoch_does_not_claim_a_checkpoint(tmp_path, files, monkeypatch):
    nan_at_call(monkeypatch, 1)
    msg = one_line_exit(train_main.main, train_argv(files, tmp_path / "run"))
    assert "loss is nan at epoch 1, step 1" in msg and "no checkpoint had been saved yet" in msg
    assert "kept" not in msg


def test_every_image_unreadable_with_skip_bad_images(tmp_path):
    recs = [{"img_path": str(tmp_path / f"missing{i}.jpg"), "target": [1, 0]} for i in range(4)]
    train = write_json(tmp_path / "train.json", recs)
    argv = ["--dataset", "demo", "--train_json", train, "--test_json", train, "--num_cls", "2", "--img_size", "16",
            "--batch_size", "2", "--num_workers", "0", "--total_epoch", "1", "--output_dir", str(tmp_path / "run"),
            "--skip_bad_images"]
    with pytest.warns(UserWarning):
        msg = one_line_exit(train_main.main, argv)
    assert "no training image could be read in epoch 1 (4 skipped)" in msg
    assert not (tmp_path / "run" / "best.pth").exists() and not (tmp_path / "run" / "epoch_1.pth").exists()


# --- 7: preparation never overwrites silently ---------------------------------------------------------
def test_prepare_refuses_to_overwrite_without_force(tmp_path):
    tiny_demo(tmp_path / "demo", num_train=4, num_test=2)
    before = (tmp_path / "demo" / "train_demo.json").read_bytes()
    r = run_py("utils/prepare/prepare_demo.py", "--out_dir", str(tmp_path / "demo"), "--num_train", "3")
    assert r.returncode == 1 and "train_demo.json (and 3 more): already prepared; pass --force" in r.stderr
    assert (tmp_path / "demo" / "train_demo.json").read_bytes() == before
    mine = tmp_path / "mine"  # a folder holding only the user's own class file: it is not replaced either
    mine.mkdir()
    (mine / "classes.txt").write_text("mine\n")
    r = run_py("utils/prepare/prepare_demo.py", "--out_dir", str(mine))
    assert r.returncode == 1 and "classes.txt: already prepared; pass --force" in r.stderr
    assert (mine / "classes.txt").read_text() == "mine\n" and not (mine / "train_demo.json").exists()
    r = run_py("utils/prepare/prepare_demo.py", "--out_dir", str(tmp_path / "demo"), "--num_train", "3", "--force")
    assert r.returncode == 0 and len(json.loads((tmp_path / "demo" / "train_demo.json").read_text())) == 3


# --- 8: errors inside DataLoader workers -----------------------------------------------------------
def test_worker_error_is_the_same_one_line(tmp_path, files):
    recs = json.loads(open(files["train"]).read())
    recs[3]["img_path"] = str(tmp_path / "gone.jpg")
    broken = write_json(tmp_path / "broken.json", recs)
    argv = train_argv(files, tmp_path / "run")
    argv[argv.index("--train_json") + 1] = broken
    argv[argv.index("--num_workers") + 1] = "1"
    r = run_py("main.py", *argv, fresh=True)  # real worker processes and the real exit path
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith(("epoch", "\r"))]
    assert r.returncode == 1 and lines[-1].startswith("error: ") and "gone.jpg (record 3" in lines[-1]
    assert "Traceback" not in r.stderr


# --- 9: flags -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("flag,value,fragment", [
    ("--batch_size", "0", "--batch_size must be a positive integer (got 0)"),
    ("--lam", "-1", "--lam must be a finite number >= 0"),
    ("--lam", "nan", "--lam must be a finite number >= 0"),
    ("--ema", "1.5", "--ema must be in (0, 1)"),
    ("--eval_every", "0", "--eval_every must be a positive integer"),
    ("--img_size", "-5", "--img_size must be a positive integer"),
    ("--num_workers", "-1", "--num_workers must be 0 or more"),
    ("--lr", "0", "--lr must be a positive number"),
])
def test_bad_flag_values_are_one_line(tmp_path, files, flag, value, fragment):
    msg = one_line_exit(train_main.main, train_argv(files, tmp_path / "run", flag, value))
    assert fragment in msg
    assert not (tmp_path / "run").exists()


def test_demo_topk_out_of_range(tmp_path):
    msg = one_line_exit(demo_main.main, ["--load_from", "x.pth", "--img_dir", str(tmp_path), "--topk", "30"])
    assert "--topk is 30 but there are only 20 classes" in msg


# --- 10: output places ------------------------------------------------------------------------------
def test_output_dir_that_is_a_file(tmp_path, files):
    (tmp_path / "taken").write_text("mine")
    msg = one_line_exit(train_main.main, train_argv(files, tmp_path / "taken"))
    assert "taken: is a file, not a folder" in msg and (tmp_path / "taken").read_text() == "mine"


def test_trailing_slash_does_not_nest_runs(tmp_path, files):
    train_main.main(train_argv(files, tmp_path / "run", "--total_epoch", "1"))
    train_main.main(train_argv(files, str(tmp_path / "run") + "/", "--total_epoch", "1"))
    assert (tmp_path / "run_2" / "epoch_1.pth").is_file() and not (tmp_path / "run" / "_2").exists()


def test_full_disk_is_one_line_and_keeps_the_saved_files(tmp_path, files, monkeypatch):
    out = tmp_path / "run"
    train_main.main(train_argv(files, out, "--total_epoch", "1"))
    before = (out / "epoch_1.pth").read_bytes()

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", no_space)
    msg = one_line_exit(train_main.main, train_argv(files, out, "--total_epoch", "2", "--resume", str(out)))
    assert "cannot write: no space left on the disk" in msg
    assert (out / "epoch_1.pth").read_bytes() == before
    assert not [n for n in os.listdir(out) if ".tmp" in n]


def test_real_full_disk_on_a_tiny_tmpfs(tmp_path):
    """The same on a real full file system, where torch reports a failed write its own way."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (mounting needs root); the test above simulates the full disk instead")
    try:
        from utils.output.fileio import OutputError, save_torch_atomic
        save_torch_atomic({"w": torch.zeros(10)}, str(mnt / "small.pth"))
        with pytest.raises(OutputError, match="no space left on the disk"):
            save_torch_atomic({"w": torch.zeros(200_000)}, str(mnt / "big.pth"))
        assert torch.equal(torch.load(mnt / "small.pth", weights_only=True)["w"], torch.zeros(10))
        assert sorted(os.listdir(mnt)) == ["small.pth"]
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_stale_temporaries_removed_on_resume(tmp_path, files):
    out = tmp_path / "run"
    train_main.main(train_argv(files, out, "--total_epoch", "1"))
    (out / ".train_state.pth.tmp4242").write_bytes(b"half a checkpoint")
    train_main.main(train_argv(files, out, "--total_epoch", "2", "--resume", str(out)))
    assert not (out / ".train_state.pth.tmp4242").exists()


def test_a_run_started_from_a_weights_file_resumes_without_it(tmp_path, files):
    from pipeline.models.backbones import get_backbone
    weights = tmp_path / "start.pth"
    torch.save(get_backbone("small_cnn").create(32).state_dict(), weights)
    start = ["--pretrained", str(weights), "--threads", "1"]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    train_main.main(train_argv(files, whole, *start))  # 2 epochs, uninterrupted
    train_main.main(train_argv(files, resumed, *start, "--total_epoch", "1"))
    weights.rename(tmp_path / "moved.pth")  # the file the run started from is gone
    train_main.main(train_argv(files, resumed, *start, "--total_epoch", "2", "--resume", str(resumed)))
    assert [json.loads(line)["epoch"] for line in open(resumed / "log.jsonl")] == [1, 2]
    a, b = (safe_load(str(out / "train_state.pth"))["model"] for out in (whole, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # exact, as resumed runs are
    msg = one_line_exit(train_main.main, train_argv(files, tmp_path / "new", *start))
    assert str(weights) in msg  # a new run still needs it


def test_a_run_started_from_imagenet_weights_resumes_without_fetching_them(tmp_path, files):
    """Offline (as every test is): with the weights in torch's hub cache the run starts; with the cache gone
    (a compute node without it) the run resumes from its state, fetching nothing."""
    from urllib.parse import urlparse

    import torchvision
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(url).path))
    os.makedirs(os.path.dirname(cached), exist_ok=True)
    torch.save(torchvision.models.resnet18().state_dict(), cached)
    run = tmp_path / "run"
    argv = train_argv(files, run, "--model", "resnet18", "--pretrained", "imagenet")
    train_main.main(argv + ["--total_epoch", "1"])
    os.remove(cached)
    train_main.main(argv + ["--total_epoch", "2", "--resume", str(run)])
    assert [json.loads(line)["epoch"] for line in open(run / "log.jsonl")] == [1, 2]


def test_voc_submission_path_that_is_a_file(tmp_path, files):
    out = tmp_path / "run"
    train_main.main(train_argv(files, out, "--total_epoch", "1"))
    (tmp_path / "sub").write_text("mine")
    msg = one_line_exit(val_main.main, ["--dataset", "demo", "--test_json", files["test"], "--classes",
                                        files["classes"], "--img_size", "32", "--num_workers", "0",
                                        "--load_from", str(out / "best.pth"), "--voc_submission",
                                        str(tmp_path / "sub")])
    assert "sub: is a file, not a folder" in msg and (tmp_path / "sub").read_text() == "mine"


# --- 11: checkpoint messages ---------------------------------------------------------------------
def test_random_bytes_and_gap_checkpoint_messages(tmp_path, files):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        safe_load(str(junk))
    gap = tmp_path / "gap"
    train_main.main(train_argv(files, gap, "--total_epoch", "1", "--head", "gap"))
    common = ["--dataset", "demo", "--test_json", files["test"], "--classes", files["classes"], "--img_size", "32",
              "--num_workers", "0", "--load_from", str(gap / "best.pth")]
    msg = one_line_exit(val_main.main, common + ["--no_record"])  # described by flags: --head defaults to csra
    assert "checkpoint has a GAP head, --head is csra" in msg
    msg = one_line_exit(val_main.main, common + ["--head", "csra"])  # the run record knows better
    assert "--head is csra but the checkpoint's run record" in msg and "says gap" in msg


# --- 12: text encodings ----------------------------------------------------------------------------
def test_bom_json_reads_and_latin1_is_one_line(tmp_path):
    img = tmp_path / "a.jpg"
    Image.new("RGB", (8, 8)).save(img)
    path = write_json(tmp_path / "bom.json", [{"img_path": str(img), "target": [1]}], bom=True)
    assert len(MultiLabelDataset(path, ImageTransform(8, train=False))) == 1
    latin = tmp_path / "latin.json"
    latin.write_bytes(json.dumps([{"img_path": "caf\u00e9.jpg", "target": [1]}], ensure_ascii=False).encode("latin-1"))
    with pytest.raises(DataError, match="latin.json: not UTF-8 text"):
        MultiLabelDataset(str(latin), ImageTransform(8, train=False))


# --- 13: demo.py inputs ---------------------------------------------------------------------------
def test_demo_inputs(tmp_path, files):
    out = tmp_path / "run"
    train_main.main(train_argv(files, out, "--total_epoch", "1"))
    common = ["--dataset", "demo", "--classes", files["classes"], "--img_size", "32", "--load_from",
              str(out / "best.pth")]
    msg = one_line_exit(demo_main.main, common + ["--img_dir", str(tmp_path / "nowhere")])
    assert "nowhere: no such file or folder" in msg
    (tmp_path / "empty").mkdir()
    msg = one_line_exit(demo_main.main, common + ["--img_dir", str(tmp_path / "empty")])
    assert "no image files in" in msg
    test_images = sorted(r["img_path"] for r in json.loads(open(files["test"]).read()))[:2]
    for d, src in (("a", test_images[0]), ("b", test_images[1])):
        (tmp_path / d).mkdir()
        Image.open(src).save(tmp_path / d / "same.jpg")
    results = demo_main.run(demo_main.get_args(common + ["--img_dir", str(tmp_path / "a"), str(tmp_path / "b"),
                                                         "--heatmaps", str(tmp_path / "maps"), "--num_workers", "1"]))
    grids = sorted(n for n in os.listdir(tmp_path / "maps") if n.endswith("_grid.png"))
    assert grids == ["a_same_grid.png", "b_same_grid.png"] and len(results) == 2
    # a folder inside a named folder is not searched, and says so (it was skipped without a word)
    (tmp_path / "a" / "more").mkdir()
    Image.open(test_images[0]).save(tmp_path / "a" / "more" / "x.jpg")
    (tmp_path / "a" / "notes.txt").write_text("hi")
    r = run_py("demo.py", *common, "--img_dir", str(tmp_path / "a"))
    assert r.returncode == 0 and f"warning: skipped {tmp_path / 'a' / 'more'}: a folder inside {tmp_path / 'a'} " \
        "(its images are not read: name it too)" in r.stderr and "notes.txt: not an image file" in r.stderr
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "sub").mkdir()
    msg = one_line_exit(demo_main.main, common + ["--img_dir", str(tmp_path / "only")])
    assert "no image files in" in msg and "1 folder inside not searched: name them" in msg
    # described by flags, with nothing that counts the classes: one line naming the flags (was a TypeError)
    unknown = ["--load_from", str(out / "best.pth"), "--no_record", "--dataset", "custom", "--model", "small_cnn"]
    msg = one_line_exit(demo_main.main, unknown + ["--img_dir", str(tmp_path / "a")])
    assert "best.pth: the number of classes is unknown" in msg and "--num_cls N or --classes FILE" in msg
    msg = one_line_exit(export_main.main, unknown + ["--format", "torchscript", "--out", str(tmp_path / "m.pt")])
    assert "the number of classes is unknown" in msg and not (tmp_path / "m.pt").exists()


# --- 12: Ctrl-C ------------------------------------------------------------------------------------
def test_ctrl_c_is_one_line_with_the_resume_hint(tmp_path):
    files = tiny_demo(tmp_path / "data", num_train=160, num_test=8)
    argv = train_argv(files, tmp_path / "run", "--total_epoch", "3", "--batch_size", "4", "--state_every", "1")
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    # Ctrl-C as a terminal delivers it: a suite started in the background (`cmd &` in a script) ignores
    # SIGINT, and a child inherits that (Python then installs no handler and the signal does nothing)
    proc = subprocess.Popen([sys.executable, "main.py", *argv], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / "run" / "train_state.pth").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip()]
    assert lines, f"exit status {proc.returncode} and nothing on stderr"
    last = lines[-1]
    assert proc.returncode == 130 and last.startswith("interrupted; continue with: python main.py ")
    assert last.endswith(f"--resume {tmp_path / 'run'}") and "Traceback" not in err
    command = shlex.split(last.split("continue with: ", 1)[1])  # the flags of the run, then --resume FOLDER
    assert command[:2] == ["python", "main.py"] and command[2:-2] == argv


def test_prepare_annotation_files_bom_latin1_and_missing_keys(tmp_path):
    root = tmp_path / "COCO2014"
    (root / "annotations").mkdir(parents=True)
    (root / "images" / "train2014").mkdir(parents=True)
    ann = root / "annotations" / "instances_train2014.json"
    ann.write_text(json.dumps({"images": [], "categories": []}))
    r = run_py("utils/prepare/prepare_coco.py", "--data_path", str(root), "--out_dir", str(tmp_path / "out"))
    assert r.returncode == 1 and "instances_train2014.json: not a COCO instances file (no 'annotations' list)" in r.stderr
    ann.write_bytes(b'{"images": [{"file_name": "caf\xe9.jpg"}]}')
    r = run_py("utils/prepare/prepare_coco.py", "--data_path", str(root), "--out_dir", str(tmp_path / "out"))
    assert r.returncode == 1 and "instances_train2014.json: not UTF-8 text" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.new("RGB", (8, 8)).save(imgs / "a.jpg")
    (tmp_path / "labels.csv").write_bytes(b"\xef\xbb\xbfa.jpg,cat\n")  # Excel's UTF-8 with a byte-order mark
    r = run_py("utils/prepare/prepare_custom.py", "--img_dir", str(imgs), "--labels", str(tmp_path / "labels.csv"),
               "--out_dir", str(tmp_path / "mine"), "--test_split", "0")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "mine" / "all.json").read_text())[0]["img_path"].endswith("a.jpg")


def test_a_metrics_log_line_cut_short_by_a_kill(tmp_path):
    """log.jsonl has one reader: a resumed run drops a line a kill cut short (and the epochs it redoes), the
    sweep counts such a run unfinished, and plot_curves names the line."""
    from utils.experiments.plan import final_entry
    from utils.runs.loggers import EpochLog, read_epoch_log
    run = tmp_path / "run"
    run.mkdir()
    (run / "args.json").write_text(json.dumps({"model": "small_cnn", "head": "csra", "num_heads": 1, "num_cls": 6,
                                               "img_size": 32, "total_epoch": 3}))
    whole = [{"epoch": 1, "mAP": 10.0}, {"epoch": 2, "mAP": 20.0}, {"epoch": 3, "mAP": 30.0, "final": {"epoch": 3}}]
    log = run / "log.jsonl"
    log.write_text("".join(json.dumps(e) + "\n" for e in whole))
    assert read_epoch_log(str(log)) == whole and final_entry(str(run)) == {"epoch": 3}
    log.write_text("".join(json.dumps(e) + "\n" for e in whole[:2]) + '{"epoch": 3, "mA')
    assert final_entry(str(run)) is None
    with pytest.raises(DataError, match=r"log.jsonl: line 3 is not a JSON object with an 'epoch'"):
        read_epoch_log(str(log))
    r = run_py("tools/plot_curves.py", run, "--out", tmp_path / "curves.png")
    assert r.returncode == 1 and "line 3 is not a JSON object" in r.stderr and r.stderr.count("\n") == 1
    EpochLog(str(log), resumed_epoch=1)  # resumed after epoch 1: epoch 2 is redone, the cut line goes
    assert log.read_text() == json.dumps(whole[0]) + "\n"
