"""A sweep's results: one row per cell of the grid with its seeds' mean and sample standard deviation, and
with a baseline each cell's paired difference to it over the seeds both have, with a 95% interval
(paired t). Written as ``results.md`` (for a paper), ``results.csv`` (one row per cell) and ``runs.csv`` (one
row per run, for pandas), and ``results.png`` (the metric against the first grid option). Every figure comes
from a run's own log.jsonl: the ``final`` entry of its last line (the chosen weights' figures)."""
from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from pipeline.errors import ConfigError
from utils.experiments.plan import Plan, PlannedRun, final_entry, run_folder
from utils.experiments.stats import Paired, mean_sd, paired_difference
from utils.output.fileio import atomic_write, save_figure_atomic

METRICS = (("test_mAP", "test mAP"), ("val_mAP", "val mAP"), ("test_CF1", "CF1"), ("test_OF1", "OF1"))
MAIN_METRIC = "test_mAP"


@dataclass(frozen=True)
class CellResult:
    cell: Dict[str, str]
    finals: Dict[int, dict]                     # seed -> the run's final entry (finished runs only)
    planned: int                                # seeds planned for the cell

    def values(self, key: str) -> Dict[int, float]:
        return {s: f[key] for s, f in self.finals.items() if isinstance(f.get(key), (int, float))}

    def summary(self, key: str) -> Tuple[Optional[float], Optional[float], int]:
        """(mean, sample sd, n) of a metric over the finished seeds."""
        values = list(self.values(key).values())
        if not values:
            return None, None, 0
        mean, sd = mean_sd(values)
        return mean, sd, len(values)


def collect(sweep: str, plan: Plan) -> List[CellResult]:
    out = []
    for cell in plan.cells():
        runs: List[PlannedRun] = [r for r in plan.runs if r.cell == cell]
        finals = {r.seed: f for r in runs for f in [final_entry(run_folder(sweep, r))] if f is not None}
        out.append(CellResult(cell, finals, len(runs)))
    return out


def parse_baseline(text: Optional[str], plan: Plan) -> Dict[str, str]:
    """'head=gap[,lam=0]': values of grid options; each cell is compared with the cell that has these values
    and its own for the other options."""
    if not text:
        return {}
    grid = dict(plan.grid)
    spec = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in grid:
            raise ConfigError(f"--baseline {text}: name grid values as OPTION=VALUE (the grid has "
                              f"{', '.join(grid) or 'no option'})")
        if value not in grid[key]:
            raise ConfigError(f"--baseline {text}: {key}={value} is not in the grid ({key}={','.join(grid[key])})")
        spec[key] = value
    return spec


def paired_to_baseline(results: List[CellResult], spec: Dict[str, str],
                       key: str = MAIN_METRIC) -> Dict[int, Optional[Paired]]:
    """For each cell (by position), its paired difference to its baseline cell (None for a baseline cell)."""
    out: Dict[int, Optional[Paired]] = {}
    for i, r in enumerate(results):
        target = dict(r.cell, **spec)
        base = next((b for b in results if b.cell == target), None)
        if base is None or base is r:
            out[i] = None
            continue
        mine, theirs = r.values(key), base.values(key)
        common = sorted(set(mine) & set(theirs))
        out[i] = paired_difference([mine[s] for s in common], [theirs[s] for s in common]) if common else None
    return out


def _pm(mean: Optional[float], sd: Optional[float]) -> str:
    if mean is None:
        return "-"
    return f"{mean:.2f}" + (f" ± {sd:.2f}" if sd is not None else "")


def _epochs(r: CellResult) -> str:
    epochs = [f.get("epoch") for _, f in sorted(r.finals.items())]
    return "/".join("-" if e is None else str(e) for e in epochs) or "-"


def _difference(d: Optional[Paired]) -> str:
    if d is None:
        return "-"
    if d.low is None:
        return f"{d.mean:+.2f} (1 seed)"
    return f"{d.mean:+.2f} [{d.low:+.2f}, {d.high:+.2f}]"


def selection_note(results: List[CellResult]) -> str:
    chosen = {f.get("selected_on") for r in results for f in r.finals.values()}
    if not chosen:
        return "no run has finished yet"
    if chosen == {"val"}:
        return "epoch, EMA or not and thresholds chosen on the validation set; the test set scored once"
    if chosen == {"test"}:
        return "epoch and EMA or not chosen on the test set (the authors' protocol: it flatters every cell alike)"
    return "runs chose on different sets (validation or test): compare with care"


def plan_command(plan: Plan, folder: str, baseline: Optional[str] = None) -> str:
    """The sweep's command line, as results.md shows it (running it again redraws the same table)."""
    grid = " ".join(f"{k}={','.join(v)}" for k, v in plan.grid)
    main = " ".join(plan.main_args)
    return (f"python tools/sweep.py {'--grid ' + grid + ' ' if grid else ''}--seeds {','.join(map(str, plan.seeds))} "
            f"--out {folder}" + (f" --baseline {baseline}" if baseline else "") + (f" -- {main}" if main else ""))


def markdown(plan: Plan, results: List[CellResult], spec: Dict[str, str], command: str) -> str:
    keys = [k for k, _ in plan.grid]
    shown = [(k, label) for k, label in METRICS if any(r.values(k) for r in results)]
    diffs = paired_to_baseline(results, spec) if spec else {}
    header = keys + ["n"] + [label for _, label in shown] + ["epoch"]
    if spec:
        header.append("Δ test mAP vs " + ",".join(f"{k}={v}" for k, v in spec.items()) + " [95% CI]")
    rows = []
    for i, r in enumerate(results):
        n = len(r.finals)
        row = [r.cell[k] for k in keys] + [str(n) if n == r.planned else f"{n} of {r.planned}"]
        row += [_pm(*r.summary(k)[:2]) for k, _ in shown] + [_epochs(r)]
        if spec:
            row.append("baseline" if dict(r.cell, **spec) == r.cell else _difference(diffs.get(i)))
        rows.append(row)
    lines = ["# Sweep results", "", f"`{command}`", "",
             f"Mean ± sample standard deviation over seeds ({', '.join(map(str, plan.seeds))}) of the chosen weights' "
             f"figures: {selection_note(results)}. CF1 and OF1 on the test set at 0.5; epoch: the chosen epoch of "
             "each seed."]
    if spec:
        lines.append("\nΔ: each cell minus its baseline cell, paired over the seeds both finished, with the 95% "
                     "confidence interval of the mean difference (paired t).")
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_csvs(folder: str, plan: Plan, results: List[CellResult], spec: Dict[str, str]) -> List[str]:
    """results.csv (a row per cell: n, mean and sd of each metric, the paired difference) and runs.csv (a row
    per finished run: its figures as logged)."""
    keys = [k for k, _ in plan.grid]
    diffs = paired_to_baseline(results, spec) if spec else {}
    cells = os.path.join(folder, "results.csv")
    with atomic_write(cells) as f:
        w = csv.writer(f)
        w.writerow(keys + ["n"] + [f"{k}_{s}" for k, _ in METRICS for s in ("mean", "sd")] +
                   (["diff_mean", "diff_low", "diff_high", "diff_n"] if spec else []))
        for i, r in enumerate(results):
            row = [r.cell[k] for k in keys] + [len(r.finals)]
            for k, _ in METRICS:
                mean, sd, _ = r.summary(k)
                row += ["" if mean is None else repr(mean), "" if sd is None else repr(sd)]
            if spec:
                d = diffs.get(i)
                row += ["", "", "", ""] if d is None else [repr(d.mean), "" if d.low is None else repr(d.low),
                                                           "" if d.high is None else repr(d.high), d.n]
            w.writerow(row)
    runs = os.path.join(folder, "runs.csv")
    with atomic_write(runs) as f:
        w = csv.writer(f)
        w.writerow(keys + ["seed", "selected_on", "epoch", "source"] + [k for k, _ in METRICS])
        for r in results:
            for seed, final in sorted(r.finals.items()):
                w.writerow([r.cell[k] for k in keys] + [seed, final.get("selected_on"), final.get("epoch"),
                                                        final.get("source")] +
                           [repr(final[k]) if isinstance(final.get(k), (int, float)) else "" for k, _ in METRICS])
    return [cells, runs]


def _number(text: str) -> Optional[float]:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def draw(path: str, plan: Plan, results: List[CellResult]) -> str:
    """The main metric against the first grid option, a line per value of the other options, error bars = sd."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k, _ in plan.grid]
    x_key = keys[0] if keys else None
    x_values = dict(plan.grid)[x_key] if x_key else ["all"]
    numeric = all(_number(v) is not None for v in x_values)
    position = {v: (_number(v) if numeric else i) for i, v in enumerate(x_values)}
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    lines: Dict[str, List[Tuple[float, float, float]]] = {}
    for r in results:
        mean, sd, _ = r.summary(MAIN_METRIC)
        if mean is None:
            continue
        label = ", ".join(f"{k}={r.cell[k]}" for k in keys[1:]) or "all runs"
        lines.setdefault(label, []).append((position[r.cell[x_key]] if x_key else 0, mean, sd or 0.0))
    span = (max(position.values()) - min(position.values())) or 1.0
    for k, (label, points) in enumerate(lines.items()):
        points.sort()
        dodge = (k - (len(lines) - 1) / 2) * span * 0.012  # side by side, so error bars do not hide each other
        ax.errorbar([p[0] + dodge for p in points], [p[1] for p in points], yerr=[p[2] for p in points],
                    marker="o", capsize=4, label=label)
    ax.set_xticks(list(position.values()), list(position))
    ax.set_xlabel(x_key or "")
    ax.set_ylabel("test mAP (mean ± sd over seeds)")
    ax.grid(alpha=0.3)
    if len(lines) > 1 or keys[1:]:
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)
    plt.close(fig)
    return path


def write_results(folder: str, plan: Plan, baseline: Optional[str]) -> Tuple[str, List[str]]:
    """Collect the finished runs and write the table files; returns (the Markdown table, the files written)."""
    results = collect(folder, plan)
    spec = parse_baseline(baseline, plan)
    text = markdown(plan, results, spec, plan_command(plan, folder, baseline))
    md = os.path.join(folder, "results.md")
    with atomic_write(md) as f:
        f.write(text)
    files = [md] + write_csvs(folder, plan, results, spec)
    if any(r.finals for r in results):
        files.append(draw(os.path.join(folder, "results.png"), plan, results))
    return text, files
