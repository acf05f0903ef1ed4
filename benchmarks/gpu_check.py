"""The GPU check, ready for the first CUDA machine: one command, under 10 minutes on one GPU, one table.

    python benchmarks/gpu_check.py              # on a machine with CUDA
    python benchmarks/gpu_check.py --dry-run    # anywhere: lists the steps and exits 0

Steps (each a subprocess with its own time limit, so one failure does not stop the others):
1. the CUDA-only tests (``tests/test_cuda.py``): training steps in every precision, NCHW and channels-last;
   DDP over NCCL with one process (torchrun); a SIGKILLed run resumed on the GPU;
2. training images/s of ResNet-101 at 448 px, batch 16 and 32, bf16 + channels-last, with and without
   ``--compile``, with peak memory and the fraction of the measured bf16 matmul rate
   (``bench_train.py``); goal: >= 1,400 img/s on an H100/H200, >= 35% of the bf16 matmul rate;
3. the data loader's images/s at 448 px from JPEG files with 8 and 16 workers; goal: >= 2,000 img/s with 16;
4. evaluation images/s (ResNet-101, 448 px, float32 as val.py's default, and bf16);
5. the CSRA head's training step beside its backbone's at 80, 1,000 and 9,605 classes (``bench_head.py --train``):
   time and peak memory, now and the float32 reference.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

from utils.configuration.entry import ScriptParser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable

LOADER = r"""
import os, tempfile, time
import numpy as np, torch
from PIL import Image
from engine import SeededShardSampler, make_loader
from pipeline.data.dataset import ImageTransform, MultiLabelDataset
tmp = tempfile.mkdtemp()
rng = np.random.default_rng(0)
recs = []
for i in range(512):
    p = os.path.join(tmp, f"{i}.jpg")
    Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)).save(p, quality=90)
    recs.append({"img_path": p, "target": [int(v) for v in rng.integers(0, 2, 80)]})
import json; json.dump(recs, open(os.path.join(tmp, "t.json"), "w"))
ds = MultiLabelDataset(os.path.join(tmp, "t.json"), ImageTransform(448, train=True))
for workers in (8, 16):
    loader = make_loader(ds, 64, workers, SeededShardSampler(len(ds), 0), torch.device("cuda"))
    for epoch in range(2):  # the first pass starts the workers
        loader.sampler.set_epoch(epoch)
        t = time.perf_counter(); n = 0
        for batch, _ in loader:
            n += len(batch[0])
        rate = n / (time.perf_counter() - t)
    print(f"RESULT loader {workers} workers: {rate:.0f} img/s")
"""

EVAL = r"""
import time, torch
from pipeline.models.model import MultiLabelNet
from pipeline.models.runtime import resolve_runtime
dev = torch.device("cuda")
for amp in ("off", "bf16"):
    rt = resolve_runtime(dev, "resnet101", amp, True, "unit")
    net = MultiLabelNet("resnet101", 80, num_heads=4, lam=0.5, img_size=448, pretrained="none")
    model = rt.prepare_model(net.eval())
    x = torch.randint(0, 256, (64, 3, 448, 448), dtype=torch.uint8)
    with torch.no_grad():
        for i in range(8):
            if i == 3:
                torch.cuda.synchronize(); t = time.perf_counter()
            with rt.autocast():
                torch.sigmoid(model(rt.to_input(x)).float()).cpu()
        torch.cuda.synchronize()
    print(f"RESULT evaluation {amp}: {5 * 64 / (time.perf_counter() - t):.0f} img/s")
"""

STEPS = [
    ("CUDA-only tests", [PY, "-m", "pytest", "-q", "-rs", "tests/test_cuda.py"], 120,
     "every precision, channels-last, DDP over NCCL, SIGKILL resume"),
    ("training ResNet-101 448 px", [PY, "benchmarks/bench_train.py", "--configs", "resnet101:448:16,resnet101:448:32",
                                    "--rows", "auto", "--compile", "--steps", "20"], 270,
     ">= 1,400 img/s, >= 35% of bf16 matmul"),
    ("data loader 448 px, 8/16 workers", [PY, "-c", LOADER], 45, ">= 2,000 img/s with 16 workers"),
    ("evaluation ResNet-101 448 px", [PY, "-c", EVAL], 45, "float32 (default) and bf16"),
    ("CSRA head vs backbone, training", [PY, "benchmarks/bench_head.py", "--train", "--device", "cuda",
                                         "--rounds", "10"], 60, "head <= 0.35x ResNet-50's step at 9,605 classes"),
]


def summary(name: str, out: str) -> str:
    lines = out.splitlines()
    if name.startswith("CUDA"):
        return next((ln for ln in reversed(lines) if " passed" in ln or " failed" in ln or "error" in ln), "?")
    if name.startswith("CSRA head"):
        return " | ".join(" ".join(ln.split()[:4]) for ln in lines if ln.strip()[:1].isdigit())
    if name.startswith("training"):
        rows = [ln for ln in lines if ln.startswith(("resnet101", "bf16 matmul", "train_step, bf16, channels-last"))]
        return " | ".join(" ".join(r.split()) for r in rows)
    return " | ".join(ln[len("RESULT "):] for ln in lines if ln.startswith("RESULT "))


def main() -> None:
    p = ScriptParser(description=__doc__)
    p.add_argument("--dry-run", action="store_true", help="list the steps and exit (no CUDA needed)")
    a = p.parse_args()
    if a.dry_run:
        for i, (name, cmd, limit, goal) in enumerate(STEPS, 1):
            shown = " ".join(c if "\n" not in c else "<inline script>" for c in cmd[1:])
            print(f"{i}. {name} (limit {limit} s; {goal}): python {shown}")
        print(f"total limit {sum(s[2] for s in STEPS)} s (under 10 minutes)")
        return
    import torch
    if not torch.cuda.is_available():
        sys.exit("error: no CUDA device here; --dry-run lists the steps")
    print(f"GPU check on {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    rows = []
    for name, cmd, limit, goal in STEPS:
        t0 = time.time()
        try:
            r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=limit)
            status, out = ("ok" if r.returncode == 0 else f"exit {r.returncode}"), r.stdout + r.stderr
        except subprocess.TimeoutExpired as e:
            status, out = "timed out", (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        rows.append((name, status, f"{time.time() - t0:.0f} s", summary(name, out), goal))
        print(f"[{status}] {name}: {rows[-1][3]}", flush=True)
        if status != "ok":
            print("\n".join(out.splitlines()[-15:]), flush=True)
    print("\n| step | status | time | result | goal |\n| --- | --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
