"""A newcomer's first hour: own data named 'custom', logs that read well in a file, steps on disk, a
record-driven demo.py, honest help."""
import csv
import json
import subprocess
import sys

import pytest

import main as train_main
from conftest import ROOT
from helpers import run_py, tiny_demo


def test_own_files_are_a_custom_dataset_named_in_the_header(tmp_path):
    files = tiny_demo(tmp_path / "mine", num_train=16, num_test=8)
    argv = ["--train_json", files["train"], "--test_json", files["test"], "--model", "small_cnn", "--pretrained",
            "none", "--img_size", "32", "--batch_size", "8", "--total_epoch", "1", "--num_workers", "0",
            "--warmup_epoch", "0", "--output_dir", str(tmp_path / "run")]  # the recipe's 2-epoch warm-up: refused
    args = train_main.get_args(argv)
    assert args.dataset == "custom" and args.decay_every == 4 and args.normalize == "unit"
    assert args.class_names[:2] == ["circle", "square"]  # from classes.txt beside the JSON
    r = run_py("main.py", *argv)
    assert r.returncode == 0, r.stderr[-1500:]
    assert "16 training images (custom)" in r.stdout and "(voc07)" not in r.stdout
    assert json.loads((tmp_path / "run" / "args.json").read_text())["dataset"] == "custom"
    # the README's demo.py line on the model just trained: --load_from alone
    img = json.loads(open(files["test"]).read())[0]["img_path"]
    r = run_py("demo.py", "--load_from", tmp_path / "run" / "best.pth", "--img_dir", img)
    assert r.returncode == 0 and img in r.stdout, r.stderr[-1500:]


def test_a_redirected_log_has_no_bars_and_plain_progress_lines(tmp_path):
    files = tiny_demo(tmp_path / "data", num_train=40, num_test=8)
    log = tmp_path / "train.log"
    cmd = [sys.executable, "main.py", "--dataset", "demo", "--train_json", files["train"], "--test_json",
           files["test"], "--img_size", "32", "--batch_size", "2", "--total_epoch", "2", "--num_workers", "0",
           "--print_freq", "5", "--output_dir", str(tmp_path / "run")]
    with open(log, "w") as f:
        assert subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=300).returncode == 0
    text = log.read_text()
    assert "\r" not in text
    lines = text.splitlines()
    assert "epoch 1/2 step 5/20 loss " in text and "epoch 2/2 step 20/20 loss " in text
    assert sum(ln.startswith("epoch 1/2 step ") for ln in lines) == 4  # every 5 of 20 iterations
    assert any(ln.startswith("ETA for the whole run: about ") for ln in lines)
    assert any(ln.startswith("epoch 1/2 done; ") and "ETA" in ln for ln in lines)
    with open(tmp_path / "run" / "steps.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["global_step"]) for r in rows] == list(range(1, 41))
    assert all(float(r["loss"]) > 0 for r in rows) and float(rows[0]["lr_backbone"]) == 0.0  # warm-up from 0


def test_tensorboard_without_the_package_says_how_to_install_it(tmp_path):
    try:
        import tensorboard  # noqa: F401
        pytest.skip("checks the message shown without tensorboard, and tensorboard is installed here")
    except ImportError:
        pass
    files = tiny_demo(tmp_path / "data", num_train=8, num_test=4)
    r = run_py("main.py", "--dataset", "demo", "--train_json", files["train"], "--test_json", files["test"],
               "--img_size", "32", "--total_epoch", "1", "--warmup_epoch", "0", "--output_dir", tmp_path / "run",
               "--tensorboard")  # (one step: with the demo's warm-up it would train at LR 0, refused)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1] == \
        "error: --tensorboard needs the tensorboard package: pip install tensorboard"


def test_help_says_what_is_true():
    r = run_py("main.py", "--help")
    text = " ".join(r.stdout.split())
    assert "native bf16" not in text or "AVX512-BF16/AMX" in text
    assert "off on CPU" not in text and "CUDA: keep the NCHW" not in text
    assert "61 s for small_cnn" in text and "about a minute" not in text
    r = run_py("val.py", "--help")
    assert "off = float32 (the published numbers' precision)" in " ".join(r.stdout.split())
