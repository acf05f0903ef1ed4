"""Train the built-in demo once per variant with the same budget and print one table: best test mAP
(over the model's and, with an EMA, the EMA's weights), CF1 and OF1 of those weights, seconds per epoch.

    python benchmarks/bench_demo_variants.py                      # the losses: bce, focal, asl
    python benchmarks/bench_demo_variants.py --variants "paper=--recipe paper" "strong=--recipe strong" \
        "strong-no-cutout=--recipe strong --cutout 0"
    python benchmarks/bench_demo_variants.py --quick              # 2 epochs on 400 images: the table's shape

Every variant is ``main.py --dataset demo`` plus its flags, in this process, one after the other (same
machine, same data, same seed). Full runtime: about 3 minutes per variant on a 2-core CPU without native
bf16 (float32), about 1 minute with native bf16; ``--quick`` finishes in well under a minute.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import tempfile
import time

import utils.process.openmp_env  # noqa: F401  (first: it configures OpenMP before torch loads it)

from utils.configuration.entry import ScriptParser

import main as train_main
from pipeline.models.runtime import cpu_has_native_bf16

LOSS_VARIANTS = ["bce=--loss bce", "focal=--loss focal", "asl=--loss asl"]


def run_variant(flags, out_dir: str, quick: bool, data_dir: str) -> dict:
    argv = ["--dataset", "demo", "--output_dir", out_dir, *flags]
    if quick:
        from utils.prepare.prepare_demo import generate_demo
        if not os.path.isfile(os.path.join(data_dir, "train_demo.json")):
            generate_demo(data_dir, num_train=320, num_test=80, quiet=True)
        argv += ["--train_json", os.path.join(data_dir, "train_demo.json"),
                 "--test_json", os.path.join(data_dir, "test_demo.json"), "--total_epoch", "2"]
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        result = train_main.train(train_main.get_args(argv))
    seconds = time.perf_counter() - t0
    log = [json.loads(line) for line in open(os.path.join(result["folder"], "log.jsonl"))]
    # every evaluated weight set: the model's and, with an EMA, the EMA's (best.pth holds the best of them)
    scored = [(e.get(p + "mAP", -1), e.get(p + "CF1"), e.get(p + "OF1"), e["epoch"], source)
              for e in log for p, source in (("", "model"), ("ema_", "ema")) if p + "mAP" in e]
    best = max(scored)
    return {"mAP": best[0], "CF1": best[1], "OF1": best[2], "epoch": best[3], "source": best[4], "epochs": len(log),
            "seconds": seconds, "train_s_per_epoch": sum(e["train_seconds"] for e in log) / len(log)}


def main() -> None:
    p = ScriptParser(description=__doc__)
    p.add_argument("--variants", nargs="+", default=LOSS_VARIANTS, metavar="NAME=FLAGS",
                   help="each a name and the main.py flags that make it")
    p.add_argument("--quick", action="store_true", help="2 epochs on 320 generated images: checks the table runs")
    a = p.parse_args()
    print(f"CPU native bf16: {cpu_has_native_bf16()}; {os.cpu_count()} cores; demo dataset"
          + (" (quick: 320 train / 80 test images, 2 epochs)" if a.quick else " (2,000 / 500 images, 10 epochs)"))
    print(f"{'variant':16s}{'best mAP':>10s}{'CF1':>8s}{'OF1':>8s}{'at epoch':>10s}{'weights':>9s}{'s/epoch':>9s}"
          f"{'total s':>9s}")
    with tempfile.TemporaryDirectory() as tmp:
        for spec in a.variants:
            name, _, flags = spec.partition("=")
            r = run_variant(shlex.split(flags), os.path.join(tmp, name), a.quick, os.path.join(tmp, "data"))
            print(f"{name:16s}{r['mAP']:10.2f}{r['CF1']:8.2f}{r['OF1']:8.2f}{r['epoch']:>7d}/{r['epochs']:<2d}"
                  f"{r['source']:>9s}{r['train_s_per_epoch']:9.1f}{r['seconds']:9.1f}", flush=True)


if __name__ == "__main__":
    main()
