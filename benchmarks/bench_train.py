"""Training-step throughput in every precision and memory format, against the authors' plain loop.

    python benchmarks/bench_train.py                    # CPU: small_cnn 64 px, ResNet-18 128 px, ResNet-50 224 px
    python benchmarks/bench_train.py --compile          # also torch.compile (compile time reported apart)
    python benchmarks/bench_train.py --configs resnet101:448:16   # on CUDA the default adds this one
    python benchmarks/bench_train.py --quick            # small_cnn only, 3 timed steps per row

Full runtime on a 2-core CPU: about 2 minutes with native bf16, about 10 without (emulated bf16 rows of
ResNet-50 are slow); on a GPU about 2 minutes.

Data is already in memory (uint8 batches, as the loader delivers them), so this times the step
alone: input conversion, forward, BCE, backward, SGD. The reference is a plain float32 NCHW loop
written the way the authors' code trains (``model(x)``, BCE, SGD step); every other row is our
``engine.train_step`` under a ``Runtime``, and its ratio is to that reference, in the same run.
On CUDA it also prints peak memory and the fraction of this GPU's bf16 matmul rate the step
achieves (both measured in this run: a large bf16 matmul, and the step's FLOPs counted by
``torch.utils.flop_counter``), and one bf16 channels-last row with ``cudnn.benchmark`` off (our rows have it
on, as ``Runtime.prepare_model(train=True)`` sets it on CUDA; the authors-style loop has it off).
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, List, Tuple

import utils.process.openmp_env  # noqa: F401  (first: it configures OpenMP before torch loads it)

from utils.configuration.entry import ScriptParser

import torch
import torch.nn as nn

from engine import train_step
from pipeline.models.model import MultiLabelNet
from pipeline.models.runtime import Runtime, cpu_has_native_bf16, resolve_runtime

Batches = List[Tuple[torch.Tensor, torch.Tensor]]


def make_batches(n: int, batch: int, size: int, classes: int) -> Batches:
    g = torch.Generator().manual_seed(0)
    return [(torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g),
             (torch.rand(batch, classes, generator=g) < 0.1).long()) for _ in range(n)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def new_model(name: str, size: int, classes: int, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    return MultiLabelNet(name, classes, num_heads=1, lam=0.1, img_size=size, pretrained="none").to(device).train()


def rate(step: Callable[[torch.Tensor, torch.Tensor], None], batches: Batches, warmup: int,
         device: torch.device) -> Tuple[float, float]:
    """(images per second over the timed batches, seconds of the warm-up steps)."""
    t0 = time.perf_counter()
    for x, y in batches[:warmup]:
        step(x, y)
    sync(device)
    t1 = time.perf_counter()
    for x, y in batches[warmup:]:
        step(x, y)
    sync(device)
    t2 = time.perf_counter()
    return sum(len(x) for x, _ in batches[warmup:]) / (t2 - t1), t1 - t0


def authors_loop(model: nn.Module, device: torch.device):
    """The reference: float32, NCHW, model(x), BCE, SGD; the input scaled to [0, 1] on the device."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    crit = nn.BCEWithLogitsLoss()

    def step(images, targets):
        x = images.to(device).float() / 255.0
        loss = crit(model(x), targets.to(device).float())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def our_step(model: nn.Module, runtime: Runtime):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    crit = nn.BCEWithLogitsLoss()
    scaler = runtime.grad_scaler()
    return lambda images, targets: train_step(model, crit, opt, images, targets, runtime, scaler)


def matmul_rate(device: torch.device, n: int = 8192) -> float:
    """Achieved bf16 TFLOP/s of a large matmul on this GPU (the practical peak)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    t = time.perf_counter()
    reps = 20
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e12


def step_flops(model: nn.Module, runtime: Runtime, batch: Tuple[torch.Tensor, torch.Tensor]) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        our_step(model, runtime)(*batch)
    return float(counter.get_total_flops())


def variants(device: torch.device, with_fp16_cpu: bool) -> List[Tuple[str, bool]]:
    out = [("off", False), ("off", True), ("bf16", False), ("bf16", True)]
    if device.type == "cuda" or with_fp16_cpu:
        out += [("fp16", False), ("fp16", True)]
    return out


ROUNDS = 5  # alternating quiet spells per thread policy
BUSY = "import time\nend = time.time() + {seconds}\nwhile time.time() < end:\n    pass\n"


def timed_steps(step, batches: Batches, seconds: float, governor=None) -> float:
    """Images per second over repeated passes of ``batches`` lasting about ``seconds`` (the governor, if
    any, fits the threads between steps as main.py's training loop does)."""
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for x, y in batches:
            step(x, y)
            done += len(x)
            if governor is not None:
                governor.after_step()
    return done / (time.perf_counter() - t0)


@dataclass
class Policy:
    """A thread policy in contended_table: its governor, its model's step, its best quiet speed."""
    label: str
    governor: object
    step: Callable
    quiet: float = 0.0


def contended_table(configs: str, seconds: float, device: torch.device, busy: int) -> None:
    """Each thread policy timed quietly, then while ``busy`` busy-loop processes share the cores, in one
    run: the default (utils.process.threads: the CPUs allowed less the others' load, re-fitted every few seconds),
    one thread, and every allowed CPU (the thread count before the default was fitted to the load). The
    quiet spells of the three alternate (ROUNDS rounds, the best of each kept), so machine noise does not
    favour one; then each meets the load, which arrives while it runs."""
    import subprocess
    from utils.process.threads import CHECK_SECONDS, ThreadGovernor, cpu_budget
    budget, why = cpu_budget()
    kind = "native bf16 (AVX512-BF16/AMX)" if cpu_has_native_bf16() else "AVX2, no native bf16"
    print(f"CPU: {kind}; {why}; {busy} busy processes in the contended column (a fair share is "
          f"{100 * min(1.0, budget / (busy + budget)):.0f}%); quiet: the best of {ROUNDS} {seconds / 3:.0f} s spells "
          f"per policy, alternating; contended: {seconds:.0f} s after {2 * CHECK_SECONDS:.0f} s to settle")
    print(f"{'model':22s}{'threads':36s}{'quiet img/s':>12s}{'contended':>11s}{'kept':>7s}{'of default quiet':>18s}")
    saved = os.environ.pop("OMP_NUM_THREADS", None)  # the default row decides by itself
    try:
        for spec in configs.split(","):
            name, size, batch = spec.split(":")
            size, batch = int(size), int(batch)
            batches = make_batches(4, batch, size, 80)
            auto = resolve_runtime(device, name, "auto", True, "unit")
            policies = []
            for label, requested in (("default (fitted to the load)", None), ("1 thread", 1),
                                     (f"{budget} threads (every CPU, fixed)", budget)):
                governor = ThreadGovernor(requested)
                step = our_step(auto.prepare_model(new_model(name, size, 80, device), train=True), auto)
                timed_steps(step, batches[:1], 0.5)  # warm-up
                policies.append(Policy(label, governor, step))
            for _ in range(ROUNDS):
                for pol in policies:
                    pol.governor.apply()
                    pol.quiet = max(pol.quiet, timed_steps(pol.step, batches, seconds / 3, pol.governor))
            for pol in policies:
                pol.governor.apply()
                procs = [subprocess.Popen([sys.executable, "-c", BUSY.format(seconds=600)]) for _ in range(busy)]
                try:
                    timed_steps(pol.step, batches, 2 * CHECK_SECONDS, pol.governor)  # the load arrives mid-run
                    loaded = timed_steps(pol.step, batches, seconds, pol.governor)
                finally:
                    for proc in procs:
                        proc.kill()
                        proc.wait()
                shown = f"{pol.label}: {pol.governor.choice.threads} at the end"
                print(f"{f'{name} {size} px b{batch}':22s}{shown:36s}{pol.quiet:12.1f}{loaded:11.1f}"
                      f"{loaded / pol.quiet:7.2f}{loaded / policies[0].quiet:18.2f}", flush=True)
            print(f"quiet speed of the default / every CPU fixed: {policies[0].quiet / policies[2].quiet:.2f}")
    finally:
        if saved is not None:
            os.environ["OMP_NUM_THREADS"] = saved


def step_table(spec: str, steps: int, a, device: torch.device, peak) -> None:
    """One model's rows: the authors-style reference, then our step per precision and memory format."""
    cuda = device.type == "cuda"
    name, size, batch = spec.split(":")
    size, batch = int(size), int(batch)
    batches = make_batches(a.warmup + steps, batch, size, 80)
    print(f"\n{name} at {size} px, batch {batch}, 80 classes")
    print(f"{'path':46s}{'img/s':>10s}{'ratio':>8s}" + (f"{'peak GiB':>10s}{'of bf16 peak':>14s}" if cuda else ""))
    torch.backends.cudnn.benchmark = False  # the plain loop sets nothing
    ref, _ = rate(authors_loop(new_model(name, size, 80, device), device), batches, a.warmup, device)
    print(f"{'authors-style loop, fp32 NCHW':46s}{ref:10.1f}{1.0:8.2f}")
    best = resolve_runtime(device, name, "auto", True, "unit").amp
    pairs = [(best, True)] if a.rows == "auto" else variants(device, a.fp16_cpu)
    rows = [(amp, cl, False, True) for amp, cl in pairs]
    if cuda:  # what cudnn.benchmark (set by Runtime.prepare_model(train=True) on CUDA) is worth
        rows.append((best, True, False, False))
    if a.compile:
        rows.append((best, True, True, True))
    for amp, cl, compiled, cudnn_benchmark in rows:
        runtime = Runtime(device, amp, cl, (0.0,) * 3, (1.0,) * 3)
        model = runtime.prepare_model(new_model(name, size, 80, device), train=True)
        torch.backends.cudnn.benchmark = cudnn_benchmark
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        net = torch.compile(model) if compiled else model
        r, warm_s = rate(our_step(net, runtime), batches, a.warmup, device)
        label = (f"train_step, {amp}, {'channels-last' if cl else 'NCHW'}" + (", compiled" if compiled else "")
                 + ("" if cudnn_benchmark or not cuda else ", cudnn.benchmark off"))
        extra = ""
        if cuda:
            mem = torch.cuda.max_memory_allocated(device) / 2 ** 30
            flops = step_flops(model, runtime, batches[0])
            extra = f"{mem:10.2f}{100 * flops * r / batch / 1e12 / peak:13.1f}%"
        print(f"{label:46s}{r:10.1f}{r / ref:8.2f}{extra}"
              + (f"   (compile + warm-up {warm_s:.1f} s)" if compiled else ""))


def main() -> None:
    p = ScriptParser(description=__doc__)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--configs", default=None,
                   help="comma-separated model:size:batch (default: CPU small_cnn:64:32,resnet18:128:16,"
                        "resnet50:224:16; CUDA adds resnet101:448:16)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per row (default 6 on CPU, 30 on CUDA)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="also time torch.compile of the model")
    p.add_argument("--fp16_cpu", action="store_true", help="also time fp16 on CPU (runs, but very slowly)")
    p.add_argument("--rows", choices=["all", "auto"], default="all",
                   help="auto: only the reference and what --amp auto picks (with its cudnn.benchmark-off and "
                        "compiled rows): what gpu_check.py times")
    p.add_argument("--quick", action="store_true", help="small_cnn at 64 px, batch 16, 3 timed steps per row")
    p.add_argument("--contended", type=int, nargs="?", const=2, default=0, metavar="N",
                   help="instead, time the thread policies (the default, 1 thread, every CPU) quietly and while N "
                        "busy processes (default 2) share the cores, side by side")
    a = p.parse_args()
    if a.quick:
        a.configs, a.steps, a.warmup = a.configs or "small_cnn:64:16", a.steps or 3, 1
    device = torch.device(a.device)
    cuda = device.type == "cuda"
    configs = a.configs or ("small_cnn:64:32,resnet18:128:16,resnet50:224:16" + (",resnet101:448:16" if cuda else ""))
    steps = a.steps or (30 if cuda else 6)
    print(f"device {device} ({torch.cuda.get_device_name(device) if cuda else f'{torch.get_num_threads()} threads'})"
          + ("" if cuda else f", native bf16: {cpu_has_native_bf16()}") + f"; torch {torch.__version__}")
    peak = matmul_rate(device) if cuda else None
    if peak:
        print(f"bf16 matmul 8192^3 in this run: {peak:.0f} TFLOP/s")
    if a.contended:
        return contended_table(configs, 2.0 if a.quick else 6.0, device, a.contended)
    for spec in configs.split(","):
        step_table(spec, steps, a, device, peak)


if __name__ == "__main__":
    main()
