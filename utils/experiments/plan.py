"""A sweep's plan and folder: the grid of main.py options crossed with seeds, one run folder per cell and seed.

The folder holds ``sweep.json`` (the plan: main.py's own flags, the grid, the seeds, and every run's name and
command line), ``runs/<name>/`` (each run's folder, main.py ``--output_dir``), ``logs/<name>.log`` (what
each run printed) and the results. Running the same command again finds each run's state in its folder:
finished runs are left alone, unfinished ones resume through main.py ``--resume``, and a run killed before
its first training state starts over.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
import shutil
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from pipeline.data.dataset_table import DATASETS
from pipeline.errors import ConfigError, CSRAError
from utils.configuration.options import BY_NAME, NEGATIONS
from utils.output.fileio import TEMPORARY, make_folder, write_json_atomic
from utils.runs.loggers import read_epoch_log
from utils.runs.run_folder import BEST_FILE, BEST_PENDING, EPOCH_FILE, LOG_FILE, STEPS_FILE, THRESHOLDS_FILE
from utils.experiments.tracking import ID_FILE
from utils.runs.run_lock import LOCK_FILE, RunLock
from utils.runs.run_record import RECORD_FILE, read_record
from utils.runs.train_state import STATE_FILE

FORMAT, VERSION = "csra-sweep", 1
PLAN_FILE = "sweep.json"
NOT_IN_GRID = {"seed": "--seeds", "output_dir": "--out", "resume": "the sweep itself", "config": "main.py's flags"}
SWITCH_VALUES = {"on": True, "true": True, "yes": True, "1": True, "off": False, "false": False, "no": False,
                 "0": False}
RUN_FILES = re.compile("^(" + "|".join([re.escape(name) for name in (  # what main.py writes in its folder
    RECORD_FILE, LOG_FILE, STEPS_FILE, BEST_FILE, THRESHOLDS_FILE, STATE_FILE, ID_FILE, LOCK_FILE)]
    + [EPOCH_FILE.pattern, BEST_PENDING.pattern, TEMPORARY.pattern]) + ")$")
RUN_FOLDERS = {"tensorboard"}


@dataclass(frozen=True)
class PlannedRun:
    name: str                  # folder name: 'lam=0.1,num_heads=4,seed=0'
    cell: Dict[str, str]       # grid option -> value
    seed: int
    argv: List[str]            # main.py's command line (without the sweep's execution flags)


@dataclass(frozen=True)
class Launch:
    """One attempt at a run: main.py's flags for it (its folder, --resume when it continues) and its log."""
    run: PlannedRun
    argv: List[str]
    log: str                   # where its output goes (appended)


@dataclass(frozen=True)
class Plan:
    main_args: List[str]
    grid: List[Tuple[str, List[str]]]
    seeds: List[int]
    runs: List[PlannedRun]

    def as_json(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "main_args": self.main_args,
                "grid": [[k, v] for k, v in self.grid], "seeds": self.seeds,
                "runs": [{"name": r.name, "cell": r.cell, "seed": r.seed, "argv": r.argv} for r in self.runs]}

    def cells(self) -> List[Dict[str, str]]:
        seen: List[Dict[str, str]] = []
        for r in self.runs:
            if r.cell not in seen:
                seen.append(r.cell)
        return seen


def parse_grid(items: Sequence[str]) -> List[Tuple[str, List[str]]]:
    """'lam=0.1,0.3' ... -> [('lam', ['0.1', '0.3']), ...], each option a main.py option and each value one
    its flag takes."""
    grid = []
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key or not values.strip():
            raise ConfigError(f"--grid {item}: write OPTION=VALUE1,VALUE2 (for example lam=0.1,0.3)")
        if key in NOT_IN_GRID:
            raise ConfigError(f"--grid {item}: {key} is set by {NOT_IN_GRID[key]}, not by the grid")
        row = BY_NAME.get(key)
        if row is None or "T" not in row.scripts or row.negates:
            raise ConfigError(f"--grid {item}: {key} is not an option of main.py")
        if any(k == key for k, _ in grid):
            raise ConfigError(f"--grid: {key} is listed twice")
        vals = [v.strip() for v in values.split(",")]
        for v in vals:
            check_value(row, v, item)
        grid.append((key, vals))
    return grid


SWITCHES = {o for o in BY_NAME if BY_NAME[o].settings("T").get("action") == "store_true"}


def check_value(row, value: str, item: str) -> None:
    """One line when ``value`` cannot be the option's: a switch's on/off, the flag's type and choices."""
    settings = row.settings("T")
    if row.name in SWITCHES:
        if value.lower() not in SWITCH_VALUES:
            raise ConfigError(f"--grid {item}: {row.name} is a switch: its values are on or off (got {value!r})")
        return
    kind = settings.get("type")
    if kind is not None:
        try:
            kind(value)
        except (ValueError, TypeError, argparse.ArgumentTypeError):
            raise ConfigError(f"--grid {item}: {value!r} is not a value of --{row.name}") from None
    choices = settings.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"--grid {item}: --{row.name} takes {', '.join(map(str, choices))} (got {value!r})")




def flags_for(key: str, value: str) -> List[str]:
    """The main.py flags that set option ``key`` to ``value`` (a switch turned off by its negating flag, when
    it has one, so a recipe's 'on' is overridden)."""
    if key in SWITCHES:
        if SWITCH_VALUES[value.lower()]:
            return [f"--{key}"]
        off = next((flag for flag, target in NEGATIONS.items() if target == key), None)
        return [f"--{off}"] if off else []
    return [f"--{key}", value]


def run_name(cell: Dict[str, str], seed: int) -> str:
    text = ",".join(f"{k}={v}" for k, v in cell.items()) + ("," if cell else "") + f"seed={seed}"
    return re.sub(r"[^A-Za-z0-9._=,+-]", "+", text)


def make_plan(grid: List[Tuple[str, List[str]]], seeds: Sequence[int], main_args: Sequence[str]) -> Plan:
    typed = {a[2:].split("=", 1)[0] for a in main_args if a.startswith("--")}
    clash = sorted(typed & ({k for k, _ in grid} | set(NOT_IN_GRID) - {"config"}))
    if clash:
        raise ConfigError(f"--{clash[0]} is given after -- and by the sweep (the grid, --seeds or --out); "
                          "give it once")
    cells: List[Dict[str, str]] = [{}]
    for key, values in grid:
        cells = [dict(c, **{key: v}) for c in cells for v in values]
    runs = []
    for cell in cells:
        for seed in seeds:
            argv = list(main_args) + [f for k, v in cell.items() for f in flags_for(k, v)] + ["--seed", str(seed)]
            runs.append(PlannedRun(run_name(cell, seed), cell, int(seed), argv))
    return Plan(list(main_args), grid, [int(s) for s in seeds], runs)


def plan_from_json(obj: dict, path: str) -> Plan:
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ConfigError(f"{path}: not a sweep plan written by tools/sweep.py")
    if obj.get("version") != VERSION:
        raise ConfigError(f"{path}: sweep plan version {obj.get('version')!r}; this code reads {VERSION}")
    try:
        runs = [PlannedRun(r["name"], dict(r["cell"]), int(r["seed"]), list(r["argv"])) for r in obj["runs"]]
        return Plan(list(obj["main_args"]), [(k, list(v)) for k, v in obj["grid"]], [int(s) for s in obj["seeds"]],
                    runs)
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{path}: a damaged sweep plan ({type(e).__name__}: {e})") from None


def read_plan(folder: str) -> Plan:
    from pipeline.jsonfile import read_json
    path = os.path.join(folder, PLAN_FILE)
    if not os.path.isfile(path):
        raise ConfigError(f"{folder}: no {PLAN_FILE} there (not a sweep folder)")
    return plan_from_json(read_json(path), path)


def check_plan(folder: str, plan: Plan) -> bool:
    """Whether ``folder`` holds this plan already (False: no plan there); another plan stops with one line."""
    path = os.path.join(folder, PLAN_FILE)
    if os.path.isfile(path):
        old = read_plan(folder)
        for what, mine, theirs in (("main.py's flags", plan.main_args, old.main_args), ("grid", plan.grid, old.grid),
                                   ("seeds", plan.seeds, old.seeds)):
            if mine != theirs:
                show = (lambda v: shlex.join(v)) if what == "main.py's flags" else str
                raise ConfigError(f"{path} holds another plan (its {what}: {show(theirs)}; now: {show(mine)}); "
                                  "continue it with its own command, or choose another --out")
        return True
    if os.path.isdir(folder) and os.listdir(folder):
        raise ConfigError(f"--out {folder}: the folder holds files but no {PLAN_FILE}; choose an empty or new folder")
    return False


def open_sweep(folder: str, plan: Plan) -> None:
    """Write the plan into a new sweep folder, or check that the folder's plan is this one."""
    if check_plan(folder, plan):
        return
    make_folder(folder)
    write_json_atomic(plan.as_json(), os.path.join(folder, PLAN_FILE))


# --- each run's state ---------------------------------------------------------------------------------
def run_folder(sweep: str, run: PlannedRun) -> str:
    return os.path.join(sweep, "runs", run.name)


def log_path(sweep: str, run: PlannedRun) -> str:
    return os.path.join(sweep, "logs", run.name + ".log")


def final_entry(folder: str) -> Optional[dict]:
    """The result of a finished run: the ``final`` entry of its log's last line, when that line is the run's
    last epoch (None while it is unfinished)."""
    path = os.path.join(folder, LOG_FILE)
    if not os.path.isfile(path):
        return None
    try:
        entries = read_epoch_log(path)
        total = (read_record(folder) or {}).get("total_epoch")
    except (OSError, ValueError, CSRAError):
        return None
    last = entries[-1] if entries else {}
    final = last.get("final")
    return final if isinstance(final, dict) and last.get("epoch") == total else None


def run_state(folder: str) -> str:
    """'done', 'busy' (a live process trains there), 'resume' (a training state to continue), 'restart' (killed
    before its first state: nothing to continue) or 'new'."""
    if not os.path.isdir(folder) or not os.listdir(folder):
        return "new"
    if final_entry(folder) is not None:
        return "done"
    if RunLock(folder).live_holder():
        return "busy"
    return "resume" if os.path.isfile(os.path.join(folder, STATE_FILE)) else "restart"


def clear_attempt(folder: str) -> None:
    """Remove what main.py wrote in a run folder that holds no training state (a run killed in its first
    epoch), so it starts over; a file main.py does not write stops the sweep instead."""
    foreign = [n for n in os.listdir(folder) if not RUN_FILES.match(n) and n not in RUN_FOLDERS]
    if foreign:
        raise ConfigError(f"{folder}: holds {', '.join(sorted(foreign)[:3])}, which main.py did not write; the run "
                          "cannot start over there: move those files, or remove the folder")
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def check_commands(plan: Plan) -> bool:
    """Each cell's main.py command line, parsed as main.py parses it: a bad value is one line before anything
    starts, naming the run. Returns whether a run trains on the built-in demo data (made once, before them)."""
    from utils.configuration.train_options import get_args
    checked, demo = set(), False
    for run in plan.runs:
        key = tuple(sorted(run.cell.items()))
        if key in checked:
            continue
        checked.add(key)
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                args = get_args(run.argv)
        except SystemExit:
            said = [ln for ln in err.getvalue().splitlines() if ln.strip()]
            raise ConfigError(f"the run {run.name}: {said[-1] if said else 'main.py refused its command line'}") from None
        except CSRAError as e:
            raise ConfigError(f"the run {run.name}: {e}") from None
        for k, v in run.cell.items():  # a switch main.py cannot turn off where a dataset or recipe turns it on
            if k in SWITCHES and bool(getattr(args, k)) != SWITCH_VALUES[v.lower()]:
                spec = DATASETS[args.dataset]
                by = f"--dataset {args.dataset}" if k in spec.train_overrides else \
                    f"--recipe {args.recipe}" if k in spec.recipe_overrides.get(args.recipe, {}) else "the data"
                raise ConfigError(f"--grid {k}={v}: {by} turns --{k} on in these runs and main.py has no flag that "
                                  "turns it off: the runs would not differ; leave it out of the grid")
        demo = demo or (args.dataset == "demo" and not args.train_json and not args.test_json)
    return demo


def attempts(folder: str, plan: Plan, extra: Sequence[str] = (),
             dry_run: bool = False) -> Tuple[List[Launch], List[str]]:
    """The launches still needed (a killed run's first attempt cleared, an unfinished one resumed) and the
    runs another live process trains now."""
    launches, busy = [], []
    counts = {}
    for run in plan.runs:
        where = run_folder(folder, run)
        state = run_state(where)
        counts[state] = counts.get(state, 0) + 1
        if state == "busy":
            busy.append(run.name)
            continue
        if state == "done":
            continue
        if state == "restart" and not dry_run:
            clear_attempt(where)
        argv = run.argv + ["--output_dir", where] + (["--resume", where] if state == "resume" else []) + list(extra)
        launches.append(Launch(run, argv, log_path(folder, run)))
    said = {"done": "finished", "resume": "to resume", "restart": "to start over (killed before any state)",
            "new": "to start", "busy": "running elsewhere"}
    print(f"{folder}: {len(plan.runs)} run{'s' if len(plan.runs) != 1 else ''}: "
          + ", ".join(f"{n} {said[s]}" for s, n in counts.items()))
    return launches, busy
