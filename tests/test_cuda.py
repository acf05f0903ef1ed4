"""CUDA-only checks (skipped without a GPU; run by benchmarks/gpu_check.py): every precision and memory
format trains, DDP over NCCL with one process, a SIGKILLed GPU run resumes."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from engine import train_step
from helpers import kill_mid_epoch, run_py, tiny_demo, train_argv
from pipeline.models.model import CSRANet
from pipeline.models.runtime import resolve_runtime
from pipeline.training.losses import make_criterion

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason=(
    "needs a CUDA GPU (torch sees none here); benchmarks/gpu_check.py runs these on a GPU machine"))
CUDA = torch.device("cuda")


@pytest.mark.parametrize("amp", ["off", "bf16", "fp16"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_training_steps_in_every_precision_and_format(amp, channels_last):
    torch.manual_seed(0)
    rt = resolve_runtime(CUDA, "resnet18", amp, channels_last, "unit")
    torch.backends.cudnn.benchmark = False
    rt.prepare_model(CSRANet("resnet18", 5, img_size=64, pretrained="none"))
    assert not torch.backends.cudnn.benchmark  # evaluation leaves cuDNN's choice alone
    model = rt.prepare_model(CSRANet("resnet18", 5, num_heads=4, img_size=64, pretrained="none").train(), train=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scaler = rt.grad_scaler()
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8, generator=g)
    targets = (torch.rand(8, 5, generator=g) < 0.3).long()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    losses = [train_step(model, make_criterion("bce"), opt, images, targets, rt, scaler) for _ in range(10)]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.backends.cudnn.benchmark  # set by prepare_model(train=True) on CUDA


def test_ddp_over_nccl_with_one_process(tmp_path):
    files = tiny_demo(tmp_path / "data", num_train=32, num_test=8)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "main.py",
                        *train_argv(files, tmp_path / "run", "--total_epoch", "1")], cwd=ROOT, capture_output=True,
                       text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "on cuda" in r.stdout and (tmp_path / "run" / "best.pth").is_file()


def test_sigkilled_gpu_run_resumes(tmp_path):
    files = tiny_demo(tmp_path / "data", num_train=160, num_test=8)
    argv = train_argv(files, tmp_path / "run", "--total_epoch", "2", "--batch_size", "4", "--state_every", "1")
    assert kill_mid_epoch(argv, tmp_path / "run" / "train_state.pth", env={"OMP_NUM_THREADS": "4"}) is not None
    r = run_py("main.py", *argv, "--resume", fresh=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed from" in r.stdout
    assert [json.loads(line)["epoch"] for line in open(tmp_path / "run" / "log.jsonl")] == [1, 2]
    assert os.path.isfile(tmp_path / "run" / "epoch_2.pth")
