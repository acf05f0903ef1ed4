"""Small datasets and checkpoints made by the tests themselves."""
import os
import subprocess
import sys

from conftest import ROOT


def tiny_demo(folder, num_train=48, num_test=24, size=32, seed=0):
    from utils.prepare.prepare_demo import generate_demo
    return generate_demo(str(folder), num_train=num_train, num_test=num_test, size=size, seed=seed, quiet=True)


def train_argv(files, out_dir, *extra):
    return ["--dataset", "demo", "--train_json", files["train"], "--test_json", files["test"],
            "--classes", files["classes"], "--img_size", "32", "--batch_size", "8", "--num_workers", "0",
            "--total_epoch", "2", "--warmup_epoch", "1", "--decay_every", "1", "--output_dir", str(out_dir),
            *extra]


def run_py(*args, timeout=300, env=None):
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env=full_env)
