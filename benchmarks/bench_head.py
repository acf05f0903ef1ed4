"""Forward time of ResNet-101 at 448 px with the GAP head and with 1, 4 and 8 CSRA heads.

Ratios are against GAP measured in the same run (the paper: 8 heads cost +8% at test time).

    python benchmarks/bench_head.py [--device cuda] [--batch 16] [--rounds 30]
    python benchmarks/bench_head.py --quick      # ResNet-18 at 224 px, 2 rounds: the same table

Full runtime on a 2-core CPU: about 2 minutes (7 rounds of 4 ResNet-101 forwards at 448 px, batch 2).
"""
from __future__ import annotations

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import utils.openmp_env  # noqa: F401,E402  (first: it configures OpenMP before torch loads it)

from utils.entry import ScriptParser  # noqa: E402

import torch  # noqa: E402

from pipeline.csra import MultiHeadCSRA  # noqa: E402
from pipeline.model import CSRANet  # noqa: E402


def time_once(model, x) -> float:
    if x.is_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    model(x)
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def median_times(models: dict, x, rounds: int, warmup: int) -> dict:
    """Interleaved rounds (every model once per round), median per model: robust to drift."""
    samples = {k: [] for k in models}
    with torch.inference_mode():
        for r in range(warmup + rounds):
            for name, m in models.items():
                t = time_once(m, x)
                if r >= warmup:
                    samples[name].append(t)
    return {k: statistics.median(v) for k, v in samples.items()}


class LoopMHA(torch.nn.Module):
    """Plain reference: one CSRA module after another (the authors' way), for the head timing."""

    def __init__(self, mha: MultiHeadCSRA):
        super().__init__()
        self.heads = mha.multi_head

    def forward(self, x):
        return sum(h(x) for h in self.heads)


def main() -> None:
    p = ScriptParser(description=__doc__)
    p.add_argument("--model", default="resnet101")
    p.add_argument("--img_size", type=int, default=448)
    p.add_argument("--batch", type=int, default=None, help="default 16 on CUDA, 2 on CPU")
    p.add_argument("--rounds", type=int, default=None, help="default 30 on CUDA, 7 on CPU")
    p.add_argument("--num_cls", type=int, default=80)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", default="bf16", choices=["bf16", "off"], help="CUDA only")
    p.add_argument("--quick", action="store_true", help="ResNet-18 at 224 px, batch 1, 2 rounds")
    a = p.parse_args()
    if a.quick:
        a.model, a.img_size, a.batch, a.rounds = "resnet18", 224, 1, 2
    cuda = a.device.startswith("cuda")
    batch = a.batch or (16 if cuda else 2)
    rounds = a.rounds or (30 if cuda else 7)
    torch.manual_seed(0)
    x = torch.rand(batch, 3, a.img_size, a.img_size, device=a.device)
    models = {"GAP": CSRANet(a.model, a.num_cls, head="gap", img_size=a.img_size, pretrained="none")}
    for h in (1, 4, 8):
        models[f"CSRA H={h}"] = CSRANet(a.model, a.num_cls, num_heads=h, lam=0.1, img_size=a.img_size,
                                        pretrained="none")
    for k in models:
        models[k] = models[k].to(a.device).eval()
        if cuda:
            models[k] = models[k].to(memory_format=torch.channels_last)
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and a.amp == "bf16")
    with ctx:
        times = median_times(models, x, rounds, warmup=3 if cuda else 1)
    print(f"{a.model} at {a.img_size} px, batch {batch}, {a.num_cls} classes, {a.device}, median of {rounds} "
          "interleaved rounds")
    print(f"{'model':12s}{'ms/batch':>10s}{'img/s':>9s}{'vs GAP':>9s}")
    for name, t in times.items():
        print(f"{name:12s}{1000 * t:10.1f}{batch / t:9.1f}{t / times['GAP']:9.3f}")

    grid = a.img_size // 32
    feats = torch.randn(batch, 2048, grid, grid, device=a.device)
    print(f"\nthe head alone on a ({batch}, 2048, {grid}, {grid}) feature map (batched heads vs one-by-one loop):")
    for h in (1, 4, 8):
        mha = MultiHeadCSRA(h, 0.1, 2048, a.num_cls).to(a.device).eval()
        t = median_times({"batched": mha, "loop": LoopMHA(mha)}, feats, rounds * 5, warmup=2)
        print(f"  H={h}: batched {1000 * t['batched']:.2f} ms, loop {1000 * t['loop']:.2f} ms "
              f"(x{t['loop'] / t['batched']:.2f}); batched head = {100 * t['batched'] / times['GAP']:.2f}% "
              "of the GAP model's forward")


if __name__ == "__main__":
    main()
