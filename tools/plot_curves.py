"""Draw training curves (loss, learning rate, test mAP per epoch) from runs' log.jsonl files.

    python tools/plot_curves.py checkpoint/resnet101 checkpoint/resnet101_2 --out curves.png
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pipeline.errors import DataError  # noqa: E402
from utils.cli import run_main  # noqa: E402


def read_log(run: str) -> List[Dict]:
    path = os.path.join(run, "log.jsonl") if os.path.isdir(run) else run
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such metrics log")
    entries = []
    with open(path) as f:
        for n, line in enumerate(f, start=1):
            if line.strip():
                try:
                    entries.append(json.loads(line))
                except json.JSONDecodeError:
                    raise DataError(f"{path}: line {n} is not JSON") from None
    if not entries:
        raise DataError(f"{path}: empty log")
    return entries


def plot(runs: List[str], out: str, labels: List[str] = None) -> str:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    panels = [("train_loss", "training loss", False), ("lr_backbone", "learning rate (backbone)", True),
              ("mAP", "test mAP", False)]
    for i, run in enumerate(runs):
        log = read_log(run)
        label = labels[i] if labels else os.path.basename(os.path.normpath(run))
        for ax, (key, title, log_y) in zip(axes, panels):
            points = [(e["epoch"], e[key]) for e in log if e.get(key) is not None]
            if points:
                ax.plot(*zip(*points), marker="o", label=label)
            if key == "mAP":
                ema = [(e["epoch"], e["ema_mAP"]) for e in log if e.get("ema_mAP") is not None]
                if ema:
                    ax.plot(*zip(*ema), linestyle="--", label=f"{label} (EMA)")
            ax.set_title(title)
            ax.set_xlabel("epoch")
            if log_y:
                ax.set_yscale("log")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run folders (or log.jsonl files)")
    p.add_argument("--out", default="curves.png")
    p.add_argument("--labels", default=None, help="comma-separated legend labels, one per run")
    a = p.parse_args(argv)
    labels = a.labels.split(",") if a.labels else None
    if labels and len(labels) != len(a.runs):
        p.error(f"--labels has {len(labels)} names for {len(a.runs)} runs")
    print(f"wrote {plot(a.runs, a.out, labels)}")


if __name__ == "__main__":
    run_main(main)
