"""ONNX Runtime against eager PyTorch on CPU, float32: images per second at batch 1 and 16.

    python benchmarks/bench_export.py [--configs small_cnn:64,resnet50:224] [--runs 5]
    python benchmarks/bench_export.py --quick     # small_cnn only, 2 runs

Full runtime on a 2-core CPU: about 3 minutes (the ResNet-50 export and its timed loops dominate).

Each model (random weights, CSRA head with 1 head) is exported with export.py's code path (parity
checked), then both run the same inputs; best of --runs timed loops after a warm-up.
"""
from __future__ import annotations

import os
import tempfile
import time

import utils.process.openmp_env  # noqa: F401  (first: it configures OpenMP before torch loads it)

from utils.configuration.entry import ScriptParser

import torch

from pipeline.models.model import MultiLabelNet
from pipeline.weights.export import export, sample_inputs


def best_rate(fn, batch: int, runs: int, reps: int) -> float:
    fn()
    best = 0.0
    for _ in range(runs):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        best = max(best, batch * reps / (time.perf_counter() - t))
    return best


def main() -> None:
    p = ScriptParser(description=__doc__)
    p.add_argument("--configs", default="small_cnn:64,resnet50:224")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="small_cnn at 64 px, 2 runs")
    a = p.parse_args()
    if a.quick:
        a.configs, a.runs = "small_cnn:64", 2
    import onnxruntime as ort

    print(f"CPU, {torch.get_num_threads()} threads, float32; onnxruntime {ort.__version__}, torch {torch.__version__}")
    print(f"{'model':16s}{'batch':>6s}{'torch img/s':>13s}{'ORT img/s':>11s}{'ratio':>7s}")
    for spec in a.configs.split(","):
        name, size = spec.split(":")
        torch.manual_seed(0)
        model = MultiLabelNet(name, 80, num_heads=1, img_size=int(size), pretrained="none").eval()
        path = os.path.join(tempfile.mkdtemp(), "m.onnx")
        export(model, [f"c{i}" for i in range(80)], "onnx", path)
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        for batch in (1, 16):
            x = sample_inputs(model, batch=batch)
            xn = x.numpy()
            reps = max(1, 64 // batch) if name == "small_cnn" else (4 if batch == 1 else 1)
            with torch.no_grad():
                t_rate = best_rate(lambda: model(x), batch, a.runs, reps)
            o_rate = best_rate(lambda: session.run(None, {"images": xn}), batch, a.runs, reps)
            print(f"{name + '@' + size:16s}{batch:6d}{t_rate:13.1f}{o_rate:11.1f}{o_rate / t_rate:7.2f}")


if __name__ == "__main__":
    main()
