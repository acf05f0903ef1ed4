"""Draw training curves (loss, learning rate, mAP per epoch: the test set's, or the validation set's when the
run held data out) from runs' log.jsonl files.

    python tools/plot_curves.py checkpoint/resnet101 checkpoint/resnet101_2 --out curves.png
"""
from __future__ import annotations

import contextlib
import io
import math
import os
import textwrap
from typing import Dict, List, Optional, Sequence, Tuple

from utils.configuration.entry import ScriptParser

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from pipeline.data.dataset_table import DATASETS
from pipeline.errors import CSRAError, DataError
from pipeline.models.heads import HEAD_KINDS, head_options
from pipeline.training.recipes import RECIPES, TRAINING_OPTIONS
from utils.configuration.cli import plural, run_main
from utils.configuration.option_help import show_option
from utils.configuration.options import APPLIES_TO, BY_NAME, RUN_DEFINING
from utils.configuration.train_options import get_args as main_options
from utils.output.fileio import save_figure_atomic
from utils.runs.loggers import read_epoch_log
from utils.runs.run_record import read_record


def read_log(run: str) -> List[Dict]:
    path = os.path.join(run, "log.jsonl") if os.path.isdir(run) else run
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such metrics log")
    entries = read_epoch_log(path)
    if not entries:
        raise DataError(f"{path}: empty log")
    for n, e in enumerate(entries, start=1):
        for key in ("epoch",) + PLOTTED:
            v = e.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
                raise DataError(f"{path}: entry {n}: {key} is {v!r}, not a finite number")
        if not isinstance(e.get("epoch"), int):
            raise DataError(f"{path}: entry {n} has no integer 'epoch'")
    return entries


PLOTTED = ("train_loss", "lr_backbone", "mAP", "ema_mAP", "val_mAP", "ema_val_mAP", "test_mAP")


def chooser_key(log: List[Dict]) -> str:
    """The mAP that chose the run's epoch: 'mAP' (the test set: the authors' protocol) or 'val_mAP'."""
    return "val_mAP" if any("val_mAP" in e for e in log) else "mAP"


def map_panel_title(logs: List[List[Dict]]) -> str:
    keys = {chooser_key(log) for log in logs}
    if keys == {"mAP"}:
        return "test mAP"
    return "validation mAP" if keys == {"val_mAP"} else "mAP (validation where held out, else test)"


def output_path(out: str) -> str:
    """Where the figure goes: ``out`` itself, ``out/curves.png`` for a folder, ``.png`` added when missing."""
    if os.path.isdir(out):
        return os.path.join(out, "curves.png")
    return out if os.path.splitext(out)[1] else out + ".png"


def described_options() -> Tuple[str, ...]:
    """The record entries a legend compares: the options that define a run (the option table's resume
    rule; bookkeeping such as --output_dir, --config or --num_workers is not among them), and its length.
    Precision and memory format come from the log instead: what the epochs actually ran in."""
    return tuple(k for k in RUN_DEFINING if k not in ("amp", "no_channels_last")) + ("total_epoch",)


def run_description(run: str, log: List[Dict]) -> Dict[str, object]:
    """What defines a run, for the legend: its record's options (args.json beside the log), with the
    precision and memory format its epochs actually ran in."""
    folder = run if os.path.isdir(run) else os.path.dirname(os.path.abspath(run))
    try:
        record = read_record(folder) or {}
    except CSRAError:  # an unreadable record: the legend names the folder only
        record = {}
    out: Dict[str, object] = {k: record[k] for k in described_options() if k in record}
    for key, (owner, choices) in APPLIES_TO.items():  # --decay_every says nothing about a one-cycle run
        if out.get(owner) not in (None, *choices):
            out.pop(key, None)
    head = HEAD_KINDS.get(out.get("head"))
    if head is not None:  # another head's own option says nothing about this run (GAP has no heads count)
        for key in head_options() - set(head.options):
            out.pop(key, None)
    amps = sorted({str(e["amp"]) for e in log if e.get("amp") is not None})
    if amps:
        out["precision"] = "+".join("float32" if a == "off" else a for a in amps)
    layouts = sorted({"channels-last" if e["channels_last"] else "NCHW" for e in log if "channels_last" in e})
    if layouts:
        out["memory"] = "+".join(layouts)
    return out


LEADERS = ("dataset", "model", "head", "recipe")  # the options whose value sets other options' defaults


def implied_defaults(described: Dict[str, object]) -> Dict[str, object]:
    """The values main.py gives every other option when only the run's dataset, model, head and recipe
    (and its data files) are typed: a value equal to these follows from those and is not news."""
    known = dict(dataset=DATASETS, head=HEAD_KINDS, recipe=RECIPES)
    if any(k not in described or (k in known and described[k] not in known[k]) for k in LEADERS):
        return {}
    argv = [x for k in LEADERS for x in (f"--{k}", str(described[k]))]
    argv += [x for k in ("train_json", "test_json") if described.get(k) for x in (f"--{k}", str(described[k]))]
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            return vars(main_options(argv))
    except (CSRAError, SystemExit):  # data files no longer where the record says: compare every value
        return {}


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


WORDS = {"img_size": lambda v: f"{v} px", "num_heads": lambda v: plural(v, "head"),
         "total_epoch": lambda v: plural(v, "epoch"), "batch_size": lambda v: f"batch {v}"}
FIRST = ("model", "head", "num_heads", "lam", "dataset", "recipe") + TRAINING_OPTIONS + (
    "img_size", "batch_size", "normalize", "pretrained", "cutmix", "seed", "precision", "memory")
IN_TITLE = ("model", "head", "num_heads", "lam", "dataset", "recipe", "img_size")
PATH_OPTIONS = ("train_json", "test_json", "classes", "data_root", "pretrained", "cutmix")  # shown by their ends


def _text(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "+".join(_text(v) for v in value)
    return str(value)


def in_words(key: str, value, path_texts: Optional[Dict[str, str]] = None) -> str:
    """One setting as a person says it: the flag and its value as typed ('model timm/resnet18', 'lam 0.3',
    'seed 1'), a switch by its name ('randaugment', 'no randaugment'), a few by their unit ('448 px')."""
    if key in BY_NAME and BY_NAME[key].words:
        return show_option(key, bool(value), BY_NAME)
    if key in WORDS:
        return WORDS[key](value)
    text = _text(value)
    return f"{key} {path_texts.get(text, text) if path_texts else text}"


def distinct_tails(paths: Sequence[str]) -> Dict[str, str]:
    """Each path's shortest ending (last folder names) that no other path of ``paths`` shares."""
    parts = {p: os.path.normpath(p).split(os.sep) for p in paths}
    out = {}
    for p, mine in parts.items():
        for n in range(1, len(mine) + 1):
            tail = mine[-n:]
            if all(q == p or parts[q][-n:] != tail for q in parts):
                break
        out[p] = "/".join(tail)
    return out


def run_names(runs: List[str]) -> List[str]:
    """Each run's folder name, with as many parent folders as it takes to tell runs apart."""
    folders = [os.path.abspath(run if os.path.isdir(run) else os.path.dirname(os.path.abspath(run))) for run in runs]
    tails = distinct_tails(folders)
    return [tails[f] for f in folders]


def differing_keys(described: List[Dict[str, object]]) -> List[str]:
    """The settings that differ between runs, most telling first, without those that only follow from a
    differing dataset, model, head or recipe (a strong run's own learning rate is not news)."""
    keys = {k for d in described for k in d}
    differing = [k for k in keys if len({_text(d[k]) for d in described if k in d}) > 1]
    implied = [implied_defaults(d) for d in described]
    news = [k for k in differing if k in ("precision", "memory") or k in LEADERS
            or not all(k in d and k in i and _same(d[k], i[k]) for d, i in zip(described, implied))]
    return sorted(news, key=lambda k: (FIRST.index(k) if k in FIRST else len(FIRST), k))


def legend_labels(runs: List[str], logs: List[List[Dict]]) -> List[str]:
    """Each run's name and, when several runs are drawn, what differs between them in words."""
    names = run_names(runs)
    if len(runs) < 2:
        return names
    described = [run_description(run, log) for run, log in zip(runs, logs)]
    shown = differing_keys(described)
    paths = distinct_tails([_text(d[k]) for d in described for k in shown if k in PATH_OPTIONS and d.get(k)])
    said = [", ".join(in_words(k, d[k], paths) for k in shown if k in d) for d in described]
    return [name + (f" ({words})" if words else "") for name, words in zip(names, said)]


def shared_settings(runs: List[str], logs: List[List[Dict]]) -> str:
    """What every run has in common, for the figure's title: 'model timm/resnet18, head csra, ...'."""
    described = [run_description(run, log) for run, log in zip(runs, logs)]
    common = [k for k in IN_TITLE if all(k in d for d in described) and len({_text(d[k]) for d in described}) == 1]
    text = ", ".join(in_words(k, described[0][k]) for k in common)
    return f"all runs: {text}" if text and len(runs) > 1 else text


def zoom(ax, values: List[float], ceiling: float = 100.0) -> None:
    """The y axis fitted to the data with a small margin (mAPs near 99 stay apart)."""
    lo, hi = min(values), max(values)
    pad = max((hi - lo) * 0.08, 0.05)
    ax.set_ylim(lo - pad, min(ceiling + pad / 2, hi + pad))


PANELS = (("train_loss", "training loss", False), ("lr_backbone", "learning rate (backbone)", True),
          ("mAP", "test mAP", False))
FIG_WIDTH, FONT = 15.0, 8  # inches; legend and title points (about 16 characters an inch)
COLUMN_CHARS = {3: 55, 2: 85, 1: 170}  # the longest label a legend column of that many holds across the figure


def legend_columns(labels: Sequence[str]) -> Tuple[List[str], int]:
    """The labels wrapped to fit their column, and how many columns the legend below the panels has."""
    longest = max(len(t) for t in labels)
    ncol = min(len(labels), next(n for n in (3, 2, 1) if longest <= COLUMN_CHARS[n] or n == 1))
    return [textwrap.fill(t, COLUMN_CHARS[ncol], subsequent_indent="    ") for t in labels], ncol


def draw(runs: List[str], logs: List[List[Dict]], labels: List[str]):
    """The figure: three panels side by side, one legend for all of them below (every run has one colour
    in every panel), and what all runs share as the title."""
    names = run_names(runs)
    entries, handles = [], []
    for i, (label, name, log) in enumerate(zip(labels, names, logs)):
        colour = f"C{i % 10}"
        entries.append(label)
        handles.append(Line2D([], [], color=colour, marker="o"))
        key = chooser_key(log)
        if any(e.get("ema_" + key) is not None for e in log):
            entries.append(f"{name}: EMA weights")
            handles.append(Line2D([], [], color=colour, linestyle="--"))
        if key == "val_mAP" and any(e.get("test_mAP") is not None for e in log):
            entries.append(f"{name}: test set (for the curves only)")
            handles.append(Line2D([], [], color=colour, linestyle=":"))
    wrapped, ncol = legend_columns(entries)
    per_column = -(-len(wrapped) // ncol)  # matplotlib fills the columns one after the other
    lines = sum(max(t.count("\n") + 1 for t in wrapped[r::per_column]) for r in range(per_column))
    title = textwrap.fill(shared_settings(runs, logs), 170)
    text_lines = lines + (title.count("\n") + 1 if title else 0)  # 0.2 in each, above the panels' 3.6 in
    fig = plt.figure(figsize=(FIG_WIDTH, 3.6 + 0.2 * text_lines), layout="constrained")
    axes = fig.subplots(1, 3)
    maps = []
    for i, log in enumerate(logs):
        chosen = chooser_key(log)
        for ax, (key, _, _) in zip(axes, PANELS):
            key = chosen if key == "mAP" else key
            points = [(e["epoch"], e[key]) for e in log if e.get(key) is not None]
            if points:
                ax.plot(*zip(*points), marker="o", color=f"C{i % 10}")
        for key, style in (("ema_" + chosen, "--"), ("test_mAP" if chosen == "val_mAP" else None, ":")):
            more = [(e["epoch"], e[key]) for e in log if key and e.get(key) is not None]
            if more:
                axes[2].plot(*zip(*more), linestyle=style, color=f"C{i % 10}")
        maps += [e[k] for e in log for k in (chosen, "ema_" + chosen, "test_mAP") if e.get(k) is not None]
    headings = [heading if key != "mAP" else map_panel_title(logs) for key, heading, _ in PANELS]
    for ax, heading, (_, _, log_y) in zip(axes, headings, PANELS):
        ax.set_title(heading)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if log_y:
            ax.set_yscale("log")
    if maps:
        zoom(axes[2], maps)
    if title:
        fig.suptitle(title, fontsize=FONT + 1)
    fig.legend(handles, wrapped, loc="outside lower center", ncol=ncol, fontsize=FONT)
    return fig


def plot(runs: List[str], out: str, labels: List[str] = None) -> str:
    """Draw the runs' curves into ``output_path(out)``; returns the path written."""
    logs = [read_log(run) for run in runs]  # every log checked before anything is drawn
    labels = labels or legend_labels(runs, logs)
    out = output_path(out)
    fig = draw(runs, logs, labels)
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
