"""tools/sweep.py: a grid over seeds whose table equals the runs' own logs (numpy and scipy as oracles), a sweep
killed mid-run that finishes with the table of an uninterrupted one, and submitit's local executor giving the
same table as the local path."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT
from helpers import run_py, tiny_demo
from utils.experiments.launch import slots
from utils.experiments.stats import paired_difference, t_central_probability, t_quantile
from utils.runs.run_lock import RunLock

SWEEP = os.path.join(ROOT, "tools", "sweep.py")


def main_args(files, *extra):
    return ["--dataset", "demo", "--train_json", files["train"], "--test_json", files["test"], "--classes",
            files["classes"], "--img_size", "32", "--batch_size", "8", "--num_workers", "0", "--warmup_epoch", "1",
            "--decay_every", "1", *extra]


@pytest.fixture(autouse=True)
def _one_thread_per_run(monkeypatch):
    """Every run of every sweep on one thread (float sums depend on the count: tables are compared exactly)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def sweep(*args):
    """The sweep's driver in this process (its runs are processes of their own)."""
    return run_py("tools/sweep.py", *args)


def final_of(run_folder):
    lines = [json.loads(ln) for ln in open(os.path.join(run_folder, "log.jsonl"))]
    return lines[-1]["final"]


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_parallel_runs_divide_the_gpus_or_else_the_cpu_threads():
    assert [x.env for x in slots(2, gpus=4, cpus=16)] == [{"CUDA_VISIBLE_DEVICES": "0,1"}, {"CUDA_VISIBLE_DEVICES": "2,3"}]
    assert [x.gpus for x in slots(2, gpus=4, cpus=16)] == [2, 2]  # (torchrun over each pair)
    assert [x.env for x in slots(3, gpus=0, cpus=8)] == [{"OMP_NUM_THREADS": "2"}] * 3
    assert slots(1, gpus=8, cpus=16)[0].gpus == 8 and slots(1, gpus=0, cpus=2)[0].env == {}
    with pytest.raises(Exception, match="at most one run per GPU"):
        slots(4, gpus=2, cpus=16)


def test_t_quantiles_and_paired_intervals_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in range(1, 31):
        assert t_quantile(0.95, df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-9)
        assert t_central_probability(1.3, df) == pytest.approx(2 * stats.t.cdf(1.3, df) - 1, abs=1e-12)
    a, b = [91.2, 90.1, 92.4, 90.9], [90.0, 90.3, 91.1, 89.7]
    d = paired_difference(a, b)
    ci = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert d.mean == pytest.approx(np.mean(a) - np.mean(b)) and (d.low, d.high) == pytest.approx((ci.low, ci.high))


def test_a_grid_over_seeds_tabulates_each_runs_own_log(tmp_path):
    files = tiny_demo(tmp_path / "data", num_train=16, num_test=8)
    out = tmp_path / "sw"
    r = sweep("--grid", "lam=0.1,0.3", "num_heads=1,2", "--seeds", "0,1", "--out", out, "--baseline", "num_heads=1",
              "--parallel", "2", "--", *main_args(files, "--total_epoch", "1"))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    plan = json.loads((out / "sweep.json").read_text())
    assert len(plan["runs"]) == 8 and "--lam" in plan["runs"][0]["argv"]
    finals = {(run["cell"]["lam"], run["cell"]["num_heads"], run["seed"]): final_of(out / "runs" / run["name"])
              for run in plan["runs"]}
    rows = {(row["lam"], row["num_heads"]): row for row in read_csv(out / "results.csv")}
    for (lam, heads), row in rows.items():
        maps = [finals[(lam, heads, s)]["test_mAP"] for s in (0, 1)]
        assert float(row["test_mAP_mean"]) == pytest.approx(np.mean(maps), abs=1e-12)
        assert float(row["test_mAP_sd"]) == pytest.approx(np.std(maps, ddof=1), abs=1e-12)
        for key in ("test_CF1", "test_OF1"):
            assert float(row[f"{key}_mean"]) == pytest.approx(np.mean([finals[(lam, heads, s)][key] for s in (0, 1)]))
        if heads == "2":  # the paired difference to num_heads=1, as scipy's paired t interval
            base = [finals[(lam, "1", s)]["test_mAP"] for s in (0, 1)]
            ci = pytest.importorskip("scipy.stats").ttest_rel(maps, base).confidence_interval(0.95)
            assert float(row["diff_mean"]) == pytest.approx(np.mean(maps) - np.mean(base), abs=1e-12)
            assert (float(row["diff_low"]), float(row["diff_high"])) == pytest.approx((ci.low, ci.high), abs=1e-9)
        else:
            assert row["diff_mean"] == ""
    per_run = read_csv(out / "runs.csv")
    assert len(per_run) == 8 and all(float(x["test_mAP"]) == finals[(x["lam"], x["num_heads"], int(x["seed"]))]
                                     ["test_mAP"] for x in per_run)
    md = (out / "results.md").read_text()
    assert "| lam | num_heads | n | test mAP | CF1 | OF1 | epoch | Δ test mAP vs num_heads=1 [95% CI] |" in md
    mean, sd = float(rows[("0.3", "2")]["test_mAP_mean"]), float(rows[("0.3", "2")]["test_mAP_sd"])
    assert f"| 0.3 | 2 | 2 | {mean:.2f} ± {sd:.2f} |" in md and "| baseline |" in md
    assert "--baseline num_heads=1 --" in md  # the command shown redraws this table, its Δ column included
    assert (out / "results.png").stat().st_size > 10_000
    again = sweep("--grid", "lam=0.1,0.3", "num_heads=1,2", "--seeds", "0,1", "--out", out, "--",
                  *main_args(files, "--total_epoch", "1"))
    assert again.returncode == 0 and "8 runs: 8 finished" in again.stdout
    other = sweep("--grid", "lam=0.5", "--out", out, "--", *main_args(files))
    assert other.returncode == 1 and "holds another plan" in other.stderr


def test_bad_grids_are_one_line_before_anything_runs(tmp_path):
    files = tiny_demo(tmp_path / "data", num_train=8, num_test=8)
    for grid, fragment in ((["lam=0.1,x"], "'x' is not a value of --lam"), (["nope=1"], "nope is not an option"),
                           (["seed=1,2"], "set by --seeds"), (["randaugment=maybe"], "its values are on or off"),
                           (["loss=bce,hinge"], "--loss takes")):
        r = sweep("--grid", *grid, "--out", tmp_path / "sw", "--", *main_args(files))
        assert r.returncode == 1 and fragment in r.stderr and "Traceback" not in r.stderr, (grid, r.stderr)
    r = sweep("--grid", "lr=0.1", "--out", tmp_path / "sw", "--", *main_args(files, "--val_split", "2"))
    assert r.returncode == 1 and "the run lr=0.1,seed=0: " in r.stderr and "--val_split" in r.stderr
    # a switch main.py cannot turn off where the dataset turns it on: the "off" runs would be "on" ones
    r = sweep("--grid", "cache_images=on,off", "--out", tmp_path / "sw", "--dry_run", "--", *main_args(files))
    assert r.returncode == 1 and "--grid cache_images=off: --dataset demo turns --cache_images on in these runs" \
        in r.stderr, r.stderr
    r = sweep("--grid", "randaugment=on,off", "--out", tmp_path / "sw", "--dry_run", "--", *main_args(files))
    assert r.returncode == 0 and "--no_randaugment" in r.stdout  # a switch with a flag that turns it off
    r = sweep("--grid", "lam=0.1,0.3", "--baseline", "lam=0.2", "--out", tmp_path / "sw", "--", *main_args(files))
    assert r.returncode == 1 and "lam=0.2 is not in the grid" in r.stderr  # before any run trains
    r = sweep("--grid", "lam=0.1,0.3", "--seeds", "0,1", "--out", tmp_path / "sw", "--dry_run", "--",
              *main_args(files))
    assert r.returncode == 0 and r.stdout.count("python main.py") == 4 and "--lam 0.3 --seed 1" in r.stdout
    assert not (tmp_path / "sw").exists()  # a dry run writes nothing


def kill_after_first_run(args, out, second, timeout=240):
    """Start the sweep and SIGKILL it once its first run has finished and the second has saved a state."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, SWEEP, *map(str, args)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    state = out / "runs" / second / "train_state.pth"
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and proc.poll() is None and not state.exists():
            time.sleep(0.01)
        assert state.exists() and proc.poll() is None, "the sweep ended before its second run saved a state"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    while RunLock(str(out / "runs" / second)).live_holder() and time.time() < deadline:
        time.sleep(0.05)  # its run ends with it (PR_SET_PDEATHSIG)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """A 2-run sweep run once without trouble: (folder, its arguments given another --out)."""
    root = tmp_path_factory.mktemp("sweep")
    files = tiny_demo(root / "data", num_train=48, num_test=8)
    extra = main_args(files, "--batch_size", "4", "--total_epoch", "3", "--state_every", "1")
    args = lambda out, *more: ["--grid", "lam=0.2", "--seeds", "0,1", "--out", out, *more, "--", *extra]  # noqa: E731
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    whole = subprocess.run([sys.executable, SWEEP, *map(str, args(root / "whole"))], capture_output=True, text=True,
                           cwd=ROOT, env=env)
    assert whole.returncode == 0, whole.stderr[-2000:]
    return root / "whole", args


def test_a_killed_sweep_resumes_to_the_table_of_an_uninterrupted_one(tmp_path, uninterrupted):
    reference, args = uninterrupted
    out = tmp_path / "killed"
    kill_after_first_run(args(out), out, "lam=0.2,seed=1")
    first = out / "runs" / "lam=0.2,seed=0"
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in first.iterdir() if p.is_file()}
    again = sweep(*args(out))
    assert again.returncode == 0, again.stderr[-2000:]
    assert "1 finished, 1 to resume" in again.stdout
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in first.iterdir() if p.is_file()} == before
    assert "--resume" in (out / "logs" / "lam=0.2,seed=1.log").read_text().split("===")[-1].splitlines()[0]
    assert read_csv(out / "results.csv") == read_csv(reference / "results.csv")
    assert read_csv(out / "runs.csv") == read_csv(reference / "runs.csv")


def test_submitits_local_executor_gives_the_local_table(tmp_path, uninterrupted):
    pytest.importorskip("submitit")
    reference, args = uninterrupted
    jobs = sweep(*args(tmp_path / "jobs", "--submitit_local", "--time_min", "10"))
    assert jobs.returncode == 0, jobs.stdout[-2000:] + jobs.stderr[-2000:]
    assert "submitted lam=0.2,seed=0 as job" in jobs.stdout and (tmp_path / "jobs" / "slurm").is_dir()
    assert read_csv(tmp_path / "jobs" / "runs.csv") == read_csv(reference / "runs.csv")
    assert read_csv(tmp_path / "jobs" / "results.csv") == read_csv(reference / "results.csv")
