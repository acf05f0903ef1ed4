"""What the CSRA head costs beside its backbone.

    python benchmarks/bench_head.py                  # inference: ResNet-101 at 448 px, GAP vs 1, 4 and 8 CSRA heads
    python benchmarks/bench_head.py --train [--json FILE]   # a training step at 80, 1,000 and 9,605 classes
    python benchmarks/bench_head.py --quick [--train]       # small sizes: the same tables in seconds

Inference (the paper: 8 heads cost +8% at test time): the forward of the whole model with each head, ratios
against GAP measured in the same run. Training (--train): the backbone's forward + backward against the CSRA
head's forward + loss + backward on features of the real size, in the default runtime (--amp auto), for
ResNet-50 and a timm model at 224 px, batch 8; the head twice in the same run, interleaved: as it trains now
(its score product in the training precision, the fused pooling) and the plain float32 reference (the product
and every pooling op in float32, autograd keeping each op's inputs: the head before 2026-12-06). Peak memory is
what torch allocates during the step beyond what it held before (the profiler's allocation record on a CPU,
max_memory_allocated on CUDA). --json FILE writes head_vs_backbone_80, head_vs_backbone_9605 (the head's time
over the backbone's, ResNet-50), head_peak_mb_9605 and their references' values.

Full runtime on a 2-core CPU: about 2 minutes for inference, 3 minutes for --train.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import utils.process.openmp_env  # noqa: F401  (first: it configures OpenMP before torch loads it)

from utils.configuration.entry import ScriptParser

import torch

from pipeline.models.csra import MultiHeadCSRA
from pipeline.models.model import MultiLabelNet


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_once(fn, device: str) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def median_times(fns: dict, rounds: int, warmup: int, device: str) -> dict:
    """Interleaved rounds (every function once per round), median per function: robust to drift."""
    samples = {k: [] for k in fns}
    for r in range(warmup + rounds):
        for name, fn in fns.items():
            t = time_once(fn, device)
            if r >= warmup:
                samples[name].append(t)
    return {k: statistics.median(v) for k, v in samples.items()}


def cpu_kind() -> str:
    cpu = open("/proc/cpuinfo").read() if os.path.isfile("/proc/cpuinfo") else ""
    if "amx_bf16" in cpu:
        return "native bf16 (AMX)"
    return "native bf16 (AVX512-BF16)" if "avx512_bf16" in cpu else "no native bf16 (AVX2)"


# --- inference: the whole model with each head ------------------------------------------------------------
class LoopMHA(torch.nn.Module):
    """Plain reference: one CSRA module after another (the authors' way), for the head timing."""

    def __init__(self, mha: MultiHeadCSRA):
        super().__init__()
        self.heads = mha.multi_head

    def forward(self, x):
        return sum(h(x) for h in self.heads)


def inference_table(a) -> None:
    cuda = a.device.startswith("cuda")
    batch = a.batch or (16 if cuda else 2)
    rounds = a.rounds or (30 if cuda else 7)
    torch.manual_seed(0)
    x = torch.rand(batch, 3, a.img_size, a.img_size, device=a.device)
    models = {"GAP": MultiLabelNet(a.model, a.num_cls, head="gap", img_size=a.img_size, pretrained="none")}
    for h in (1, 4, 8):
        models[f"CSRA H={h}"] = MultiLabelNet(a.model, a.num_cls, num_heads=h, lam=0.1, img_size=a.img_size,
                                        pretrained="none")
    for k in models:
        models[k] = models[k].to(a.device).eval()
        if cuda:
            models[k] = models[k].to(memory_format=torch.channels_last)
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and a.amp == "bf16")
    with ctx, torch.inference_mode():
        times = median_times({k: (lambda m=m: m(x)) for k, m in models.items()}, rounds, 3 if cuda else 1, a.device)
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
        with torch.inference_mode():
            t = median_times({"batched": lambda: mha(feats), "loop": lambda: LoopMHA(mha)(feats)}, rounds * 5, 2,
                             a.device)
        print(f"  H={h}: batched {1000 * t['batched']:.2f} ms, loop {1000 * t['loop']:.2f} ms "
              f"(x{t['loop'] / t['batched']:.2f}); batched head = {100 * t['batched'] / times['GAP']:.2f}% "
              "of the GAP model's forward")


# --- training: the head beside the backbone ------------------------------------------------------------------
class Float32Reference(torch.nn.Module):
    """The plain reference: the head's score product and every pooling op in float32 with autograd keeping each
    op's inputs (the head before 2026-12-06), on the same weights as ``mha``."""

    def __init__(self, mha: MultiHeadCSRA):
        super().__init__()
        self.mha = mha

    def forward(self, x):
        mha = self.mha
        with torch.autocast(x.device.type, enabled=False):
            w = torch.cat([h.head.weight for h in mha.multi_head]).flatten(1).float()
            w = w / w.norm(dim=1, keepdim=True)
            s = torch.einsum("kd,bdhw->bkhw", w, x.float())
            s = s.reshape(s.shape[0], len(mha.multi_head), mha.num_classes, -1)
            n = mha.finite_temperatures.numel()
            part = s[:, :n]
            T = mha.finite_temperatures.view(1, -1, 1, 1)
            att = (torch.softmax(part * T, dim=-1) * part).sum(dim=-1).sum(dim=1)
            if n < s.shape[1]:
                att = att + s[:, n:].amax(dim=-1).sum(dim=1)
            return s.mean(dim=-1).sum(dim=1) + mha.lam * att


def _rss(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))


def peak_mb(fn, device: str) -> float:
    """MB ``fn()`` holds at its peak beyond what was held before it, after a first call (threads and caches made).
    CUDA: max_memory_allocated. CPU (Linux): the process's peak resident memory (VmHWM, reset through
    /proc/self/clear_refs) with glibc returning every large block at once (a fixed mmap threshold), so the peak
    is the tensors'."""
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2 ** 20
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _rss("VmRSS:")
    fn()
    return (_rss("VmHWM:") - before) / 2 ** 20


def fixed_mmap_threshold() -> None:
    """glibc: blocks over 128 KB come from mmap and go back to the system when freed (no dynamic threshold),
    so resident memory follows what torch holds."""
    import ctypes
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def step_functions(model_name: str, size: int, batch: int, c: int, device: str):
    """(runtime, {'backbone', 'head', 'reference': a training step's part}) for ``c`` classes."""
    from pipeline.models.runtime import resolve_runtime
    from pipeline.training.losses import make_criterion
    runtime = resolve_runtime(torch.device(device), model_name, "auto", True, "unit")
    criterion = make_criterion("bce", partial_labels=True)
    x = torch.rand(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    net = MultiLabelNet(model_name, c, img_size=size, pretrained="none").train()
    net.head_product_follows_autocast(True)
    model = runtime.prepare_model(net, train=True)
    with torch.no_grad(), runtime.autocast():
        feats = model.forward_features(x)  # the backbone's output as the head receives it (bf16 under autocast)
    targets = torch.randint(-1, 2, (batch, c), device=device).float()  # a third unknown, as partial labels
    reference = Float32Reference(model.head)

    def backbone():
        model.zero_grad(set_to_none=True)  # (as each training step starts: the gradients are new tensors)
        with runtime.autocast():
            f = model.forward_features(x)
        f.float().sum().backward()

    def head_step(head):
        def step():
            model.zero_grad(set_to_none=True)
            f = feats.detach().requires_grad_()
            with runtime.autocast():
                logits = head(f)
            criterion(logits.float(), targets).backward()
        return step
    return runtime, {"backbone": backbone, "head": head_step(model.head), "reference": head_step(reference)}


def plan(quick: bool):
    counts = [80, 1000] if quick else [80, 1000, 9605]
    models = ["small_cnn"] if quick else ["resnet50", "timm/convnext_tiny"]
    return [(m, 64 if m == "small_cnn" else 224, c) for m in models for c in counts]


def train_tables(a) -> dict:
    """For every model and class count: the backbone's time alone, then the head's and the reference's,
    interleaved (a step right after the backbone's pays for the memory the backbone gave back, so the backbone
    is timed apart); the peak memory in a process of its own (``memory_table``)."""
    rounds = a.rounds or (2 if a.quick else 5)
    results, sizes = {}, {}
    for name, size, c in plan(a.quick):
        sizes[name] = size
        try:
            runtime, fns = step_functions(name, size, 8, c, a.device)
            backbone = median_times({"backbone": fns["backbone"]}, rounds, 1, a.device)["backbone"]
            t = median_times({k: fns[k] for k in ("head", "reference")}, rounds * 3, 2, a.device)
        except Exception as e:  # e.g. timm missing: the other model's table still stands
            print(f"\n{name}, {c} classes: skipped ({type(e).__name__}: {str(e)[:100]})")
            continue
        results.setdefault(name, {})[c] = {"backbone_ms": 1000 * backbone, "head_ms": 1000 * t["head"],
                                           "reference_ms": 1000 * t["reference"], "amp": runtime.amp}
    memory = memory_table(a)
    for name, rows in results.items():
        for c, row in rows.items():
            row.update(memory.get(f"{name} {c}", {"head_mb": float("nan"), "reference_mb": float("nan")}))
        print_train_table(name, sizes[name], 8, rows, a.device)
    return results


def memory_table(a) -> dict:
    """The heads' peak memory, measured in a new process of this script (--memory_only) whose glibc returns
    large blocks to the system at once from its start (on a CPU; a fixed mmap threshold slows every step, and
    set late it would not apply to the memory held already)."""
    import subprocess
    import tempfile
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        cmd = [sys.executable, os.path.abspath(__file__), "--train", "--memory_only", f.name, "--device", a.device]
        if a.quick:
            cmd.append("--quick")
        if subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode != 0:
            print("(the memory measurement failed: MB columns left empty)")
            return {}
        return json.load(open(f.name))


def measure_memory(a, path: str) -> None:
    if a.device == "cpu":
        fixed_mmap_threshold()
    out = {}
    for name, size, c in plan(a.quick):
        try:
            _, fns = step_functions(name, size, 8, c, a.device)
        except Exception:
            continue
        out[f"{name} {c}"] = {"head_mb": peak_mb(fns["head"], a.device),
                              "reference_mb": peak_mb(fns["reference"], a.device)}
    with open(path, "w") as f:
        json.dump(out, f)


def print_train_table(model_name: str, size: int, batch: int, rows: dict, device: str) -> None:
    amp = next(iter(rows.values()))["amp"]
    print(f"\ntraining step, {model_name} at {size} px, batch {batch}, {device} ({cpu_kind() if device == 'cpu' else ''}"
          f"), --amp auto = {amp}; ms and MB per step; head = forward + loss + backward")
    print(f"{'classes':>8s}{'backbone ms':>13s}{'head ms':>9s}{'x backbone':>11s}{'head MB':>9s}{'float32 ref ms':>16s}"
          f"{'x backbone':>11s}{'ref MB':>8s}{'time':>7s}{'memory':>8s}")
    for c, r in rows.items():
        b = r["backbone_ms"]
        print(f"{c:8d}{b:13.1f}{r['head_ms']:9.1f}{r['head_ms'] / b:11.3f}{r['head_mb']:9.1f}{r['reference_ms']:16.1f}"
              f"{r['reference_ms'] / b:11.3f}{r['reference_mb']:8.1f}{r['head_ms'] / r['reference_ms']:7.2f}"
              f"{r['head_mb'] / max(r['reference_mb'], 1e-9):8.2f}")
    print("(time, memory: the head now over the float32 reference, same run)")


def headline(results: dict) -> dict:
    rows = results.get("resnet50") or next(iter(results.values()))
    out = {"cpu": cpu_kind()}
    for c in (80, 9605):
        if c in rows:
            r = rows[c]
            out[f"head_vs_backbone_{c}"] = r["head_ms"] / r["backbone_ms"]
            out[f"reference_vs_backbone_{c}"] = r["reference_ms"] / r["backbone_ms"]
    if 9605 in rows:
        out["head_peak_mb_9605"] = rows[9605]["head_mb"]
        out["reference_peak_mb_9605"] = rows[9605]["reference_mb"]
    return out


def main() -> None:
    p = ScriptParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", action="store_true", help="a training step's head beside its backbone (see above)")
    p.add_argument("--json", default=None, metavar="FILE", help="with --train: write the headline figures")
    p.add_argument("--model", default="resnet101")
    p.add_argument("--img_size", type=int, default=448)
    p.add_argument("--batch", type=int, default=None, help="default 16 on CUDA, 2 on CPU")
    p.add_argument("--rounds", type=int, default=None, help="default 30 on CUDA, 7 on CPU (training: 5)")
    p.add_argument("--num_cls", type=int, default=80)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", default="bf16", choices=["bf16", "off"], help="inference on CUDA only")
    p.add_argument("--quick", action="store_true", help="small sizes, 2 rounds: the same tables in seconds")
    p.add_argument("--memory_only", metavar="FILE", help=argparse.SUPPRESS)  # (the memory measurement's process)
    a = p.parse_args()
    if a.memory_only:
        measure_memory(a, a.memory_only)
        return
    print(f"{os.cpu_count()} CPUs, {cpu_kind()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    if not a.train:
        if a.quick:
            a.model, a.img_size, a.batch, a.rounds = "resnet18", 224, 1, 2
        inference_table(a)
        return
    results = train_tables(a)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(headline(results), tables={m: {str(c): r for c, r in rows.items()}
                                                      for m, rows in results.items()}), f, indent=1)
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
