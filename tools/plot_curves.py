"""Draw training curves (loss, learning rate, test mAP per epoch) from runs' log.jsonl files.

    python tools/plot_curves.py checkpoint/resnet101 checkpoint/resnet101_2 --out curves.png
"""
from __future__ import annotations

import json
import math
import os
import sys
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.entry import ScriptParser  # noqa: E402

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pipeline.errors import CSRAError, DataError  # noqa: E402
from utils.run_record import read_record  # noqa: E402
from utils.fileio import save_figure_atomic  # noqa: E402
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
    for n, e in enumerate(entries, start=1):
        if not isinstance(e, dict):
            raise DataError(f"{path}: entry {n} is not a JSON object")
        for key in ("epoch",) + PLOTTED:
            v = e.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
                raise DataError(f"{path}: entry {n}: {key} is {v!r}, not a finite number")
        if not isinstance(e.get("epoch"), int):
            raise DataError(f"{path}: entry {n} has no integer 'epoch'")
    return entries


PLOTTED = ("train_loss", "lr_backbone", "mAP", "ema_mAP")


def output_path(out: str) -> str:
    """Where the figure goes: ``out`` itself, ``out/curves.png`` for a folder, ``.png`` added when missing."""
    if os.path.isdir(out):
        return os.path.join(out, "curves.png")
    return out if os.path.splitext(out)[1] else out + ".png"


# record entries that say nothing about how a run differs from another
NOT_COMPARED = {"run_id", "record_version", "output_dir", "resume", "resume_changes", "num_workers", "print_freq", "state_every",
                "eval_every", "tensorboard", "class_names", "record_path", "record_names", "report", "runtime",
                "train_aug", "test_aug", "cache_images", "compile", "amp"}
MOST_SHOWN = 4


def run_description(run: str, log: List[Dict]) -> Dict[str, str]:
    """What defines a run, for the legend: its record's options (args.json beside the log), with the
    precision and memory format its epochs actually ran in."""
    folder = run if os.path.isdir(run) else os.path.dirname(os.path.abspath(run))
    try:
        record = read_record(folder) or {}
    except CSRAError:  # an unreadable record: the legend names the folder only
        record = {}
    out = {k: str(v) for k, v in record.items() if k not in NOT_COMPARED}
    amps = sorted({str(e["amp"]) for e in log if e.get("amp") is not None})
    if amps:
        out["precision"] = "+".join("float32" if a == "off" else a for a in amps)
    layouts = sorted({"channels-last" if e["channels_last"] else "NCHW" for e in log if "channels_last" in e})
    if layouts:
        out["memory"] = "+".join(layouts)
    return out


def legend_labels(runs: List[str], logs: List[List[Dict]]) -> List[str]:
    """Each run's folder name and, when several runs are drawn, what differs between their records."""
    names = [os.path.basename(os.path.normpath(run if os.path.isdir(run) else os.path.dirname(os.path.abspath(run))))
             for run in runs]
    if len(runs) < 2:
        return names
    described = [run_description(run, log) for run, log in zip(runs, logs)]
    keys = sorted({k for d in described for k in d})
    differing = [k for k in keys if len({d.get(k, "-") for d in described}) > 1]
    first = [k for k in ("precision", "model", "head", "recipe", "lr", "loss") if k in differing]
    shown = (first + [k for k in differing if k not in first])[:MOST_SHOWN]
    return [name + (" (" + ", ".join(f"{k} {d.get(k, '-')}" for k in shown) + ")" if shown else "")
            for name, d in zip(names, described)]


def zoom(ax, values: List[float], ceiling: float = 100.0) -> None:
    """The y axis fitted to the data with a small margin (mAPs near 99 stay apart)."""
    lo, hi = min(values), max(values)
    pad = max((hi - lo) * 0.08, 0.05)
    ax.set_ylim(lo - pad, min(ceiling + pad / 2, hi + pad))


def plot(runs: List[str], out: str, labels: List[str] = None) -> str:
    """Draw the runs' curves into ``output_path(out)``; returns the path written."""
    logs = [read_log(run) for run in runs]  # every log checked before anything is drawn
    labels = labels or legend_labels(runs, logs)
    out = output_path(out)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    panels = [("train_loss", "training loss", False), ("lr_backbone", "learning rate (backbone)", True),
              ("mAP", "test mAP", False)]
    maps = []
    for label, log in zip(labels, logs):
        for ax, (key, title, log_y) in zip(axes, panels):
            points = [(e["epoch"], e[key]) for e in log if e.get(key) is not None]
            if points:
                ax.plot(*zip(*points), marker="o", label=label)
            if key == "mAP":
                ema = [(e["epoch"], e["ema_mAP"]) for e in log if e.get("ema_mAP") is not None]
                maps += [v for _, v in points + ema]
                if ema:
                    ax.plot(*zip(*ema), linestyle="--", label=f"{label} (EMA)")
            ax.set_title(title)
            ax.set_xlabel("epoch")
            if log_y:
                ax.set_yscale("log")
    if maps:
        zoom(axes[2], maps)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure_atomic(fig, out, dpi=100)
    plt.close(fig)
    return out


def main(argv=None) -> None:
    p = ScriptParser(description=__doc__)
    p.add_argument("runs", nargs="+", help="run folders (or log.jsonl files)")
    p.add_argument("--out", default="curves.png", help="the PNG to write (a folder: curves.png in it)")
    p.add_argument("--labels", default=None, help="comma-separated legend labels, one per run")
    a = p.parse_args(argv)
    labels = a.labels.split(",") if a.labels else None
    if labels and len(labels) != len(a.runs):
        p.error(f"--labels has {len(labels)} names for {len(a.runs)} runs")
    print(f"wrote {plot(a.runs, a.out, labels)}")


if __name__ == "__main__":
    run_main(main)
