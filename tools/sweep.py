"""Run a grid of main.py options over seeds, here or on a Slurm cluster, and tabulate the results.

    python tools/sweep.py --grid lam=0.1,0.3,0.5 num_heads=1,4 --seeds 0,1,2 --out sweeps/lam -- --dataset voc07
    python tools/sweep.py --grid head=csra,gap --seeds 0,1,2 --out sweeps/head --baseline head=gap -- --dataset demo
    python tools/sweep.py ... --slurm gpu --gpus_per_node 8 --time_min 600     # each run a torchrun job
    python tools/sweep.py --table sweeps/lam --baseline num_heads=1              # the table of a (partial) sweep

Everything after ``--`` is main.py's own command line, the same for every run. The sweep folder holds the
plan (sweep.json), a run folder per cell and seed (runs/), each run's output (logs/) and the results
(results.md, results.csv, runs.csv, results.png). Running the same command again skips the finished runs and
resumes the unfinished ones, so a sweep killed at any moment ends with the table an uninterrupted one has.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from typing import List, Optional, Sequence, Tuple

from pipeline.data.dataset_table import DATASETS
from pipeline.errors import ConfigError
from utils.configuration.cli import plural
from utils.configuration.entry import ScriptParser, run_main
from utils.experiments.launch import Cluster, Launch, launch_here, launch_on_cluster, outcome
from utils.experiments.plan import (attempts, check_commands, check_plan, make_plan, open_sweep, parse_grid,
                                    read_plan, run_folder)
from utils.experiments.results import parse_baseline, write_results
from utils.experiments.tracking import log_sweep_results, resolve_uri, sweep_parent
from utils.prepare.prepare_demo import ensure_demo_files


def build_parser() -> argparse.ArgumentParser:
    p = ScriptParser(description="Run a grid of main.py options over seeds and tabulate the results. Everything "
                                 "after -- is main.py's own command line, the same for every run.")
    p.add_argument("--grid", nargs="*", default=[], metavar="OPTION=V1,V2", help="main.py options and their values "
                   "(a switch: on,off); every combination is a cell")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (main.py --seed), each cell once per seed")
    p.add_argument("--out", metavar="DIR", help="the sweep folder: sweep.json, runs/, logs/ and the results")
    p.add_argument("--baseline", metavar="OPTION=VALUE", help="add each cell's paired difference to the cell with "
                   "this grid value (over the seeds both finished, with a 95%% interval)")
    p.add_argument("--table", metavar="DIR", help="only write the results of the sweep in DIR (finished runs so far)")
    p.add_argument("--dry_run", action="store_true", help="print each run's state and command; launch nothing")
    p.add_argument("--parallel", type=int, default=1, metavar="N", help="here: N runs at once, the GPUs (or else "
                   "the CPU threads) divided between them")
    p.add_argument("--mlflow", nargs="?", const="local", metavar="URI", help="log every run to MLflow as a child of "
                   "one run for the sweep (default store: mlflow.db in the working folder; needs pip install mlflow)")
    p.add_argument("--mlflow_experiment", default="csra", metavar="NAME", help="the MLflow experiment")
    cluster = p.add_argument_group("on a Slurm cluster (through submitit: pip install submitit)")
    cluster.add_argument("--slurm", metavar="PARTITION", help="submit each run as a job to this partition")
    cluster.add_argument("--submitit_local", action="store_true", help="the same jobs through submitit's local "
                         "executor (no cluster: for checking a sweep before submitting it)")
    cluster.add_argument("--nodes", type=int, default=1, help="nodes per run (torchrun across them)")
    cluster.add_argument("--gpus_per_node", type=int, default=1, help="GPUs per node (one process each)")
    cluster.add_argument("--cpus_per_task", type=int, default=8, help="CPUs per node for the run")
    cluster.add_argument("--time_min", type=int, default=24 * 60, help="time limit per run, minutes")
    return p


def split_argv(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
    argv = list(argv)
    if "--" in argv:
        k = argv.index("--")
        return argv[:k], argv[k + 1:]
    return argv, []


def parse_seeds(text: str) -> List[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {text}: write whole numbers separated by commas, e.g. 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ConfigError(f"--seeds {text}: distinct seeds >= 0, e.g. 0,1,2")
    return seeds


def run_sweep(a: argparse.Namespace, main_args: List[str]) -> None:
    if not a.out:
        raise ConfigError("--out DIR is required (the sweep folder), or --table DIR")
    if min(a.parallel, a.nodes, a.cpus_per_task, a.time_min) < 1 or a.gpus_per_node < 0:
        raise ConfigError("--parallel, --nodes, --cpus_per_task and --time_min must be positive")
    plan = make_plan(parse_grid(a.grid), parse_seeds(a.seeds), main_args)
    parse_baseline(a.baseline, plan)  # (a typo here stops now, not after every run has trained)
    demo = check_commands(plan)
    if a.dry_run:  # nothing written: the plan checked against the folder's, each run's state and command
        check_plan(a.out, plan)
        for launch in attempts(a.out, plan, dry_run=True)[0]:
            print(f"{launch.run.name}: python main.py {shlex.join(launch.argv)}")
        return
    open_sweep(a.out, plan)
    if demo:
        ensure_demo_files(DATASETS["demo"].train_json, DATASETS["demo"].test_json)  # once, not by each run
    tracked = track(a, plan)
    launches, busy = attempts(a.out, plan, tracked[2] if tracked else ())
    finished, failed, t0 = [0], [], time.time()

    def done(launch: Launch, status: int) -> None:
        finished[0] += 1
        text = outcome(run_folder(a.out, launch.run), launch.log, status)
        if text.startswith("failed"):
            failed.append(launch.run.name)
        print(f"[{finished[0]}/{len(launches)}] {launch.run.name}: {text} ({time.time() - t0:.0f} s)", flush=True)

    if a.slurm or a.submitit_local:
        cluster = Cluster(None if a.submitit_local else a.slurm, a.nodes, a.gpus_per_node, a.cpus_per_task, a.time_min)
        launch_on_cluster(launches, cluster, a.out, done)
    else:
        launch_here(launches, a.parallel, done)
    files = table(a.out, a.baseline)
    if tracked:
        log_sweep_results(tracked[0], tracked[1], files)
    if failed:
        raise ConfigError(f"{plural(len(failed), 'run')} failed ({', '.join(failed[:3])}{', ...' if len(failed) > 3 else ''}"
                          "): their lines above say why; the table holds the finished runs, and the same command "
                          "runs the others again")
    if busy:
        raise ConfigError(f"{plural(len(busy), 'run')} of this sweep train in another process ({', '.join(busy[:3])}"
                          f"{', ...' if len(busy) > 3 else ''}); run the same command again when they have ended")


def track(a: argparse.Namespace, plan) -> Optional[Tuple[str, str, List[str]]]:
    """With --mlflow: (store, the sweep's parent run, the flags that make each run its child)."""
    if not a.mlflow:
        return None
    uri = resolve_uri(a.mlflow)
    grid = " ".join(f"{k}={','.join(v)}" for k, v in plan.grid)
    parent = sweep_parent(uri, a.mlflow_experiment, a.out, {"grid": grid, "seeds": a.seeds,
                                                             "main_args": shlex.join(plan.main_args)})
    return uri, parent, ["--mlflow", uri, "--mlflow_experiment", a.mlflow_experiment, "--mlflow_parent", parent]


def table(folder: str, baseline: Optional[str]) -> List[str]:
    text, files = write_results(folder, read_plan(folder), baseline)
    print(text)
    print("wrote " + ", ".join(files))
    return files


def main(argv: Optional[Sequence[str]] = None) -> None:
    own, main_args = split_argv(sys.argv[1:] if argv is None else argv)
    a = build_parser().parse_args(own)
    if a.table:
        run_main(lambda: table(a.table, a.baseline))
    else:
        run_main(lambda: run_sweep(a, main_args))


if __name__ == "__main__":
    main()
