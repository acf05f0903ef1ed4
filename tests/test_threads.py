"""Threads that fit the CPU actually available: the budget from affinity, quota and torchrun, the load
of other processes, the decisions at start and while training, and what main.py prints and records."""
import json
import subprocess
import sys
import time

import pytest
import torch

from helpers import run_py, tiny_demo, train_argv
from pipeline.errors import ConfigError
from utils.process import threads as T


def test_threads_for_a_budget_and_a_load():
    assert T.fits(2, 0.0) == 2 and T.fits(2, 0.4) == 2
    assert T.fits(2, 0.6) == 1 and T.fits(2, 1.8) == 1 and T.fits(2, 5.0) == 1
    assert T.fits(8, 3.0) == 5 and T.fits(8, 2.6) == 5 and T.fits(8, 2.4) == 6


def test_cgroup_quota_both_versions(tmp_path):
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert T.cgroup_quota(str(v2)) == 1.5
    (v2 / "cpu.max").write_text("max 100000\n")
    assert T.cgroup_quota(str(v2)) is None
    v1 = tmp_path / "v1" / "cpu"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert T.cgroup_quota(str(tmp_path / "v1")) == 3.0
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert T.cgroup_quota(str(tmp_path / "v1")) is None
    assert T.cgroup_quota(str(tmp_path / "none")) is None


def test_budget_from_affinity_quota_and_torchrun(monkeypatch):
    monkeypatch.setattr(T, "allowed_cpus", lambda: list(range(8)))
    monkeypatch.setattr(T, "cgroup_quota", lambda: None)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert T.cpu_budget() == (8, "8 CPUs")
    monkeypatch.setattr(T, "cgroup_quota", lambda: 2.5)
    assert T.cpu_budget() == (2, "8 CPUs, cgroup quota 2.5")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two torchrun processes share the two: one thread each
    assert T.cpu_budget() == (1, "8 CPUs, cgroup quota 2.5 shared by 2 processes")


@pytest.fixture
def fake_load(monkeypatch):
    """The governor on a 2-CPU budget whose meter reports the loads put in the list, checking every call."""
    readings = []
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(T, "cpu_budget", lambda: (2, "2 CPUs"))
    monkeypatch.setattr(T.LoadMeter, "others", lambda self: readings.pop(0))
    monkeypatch.setattr(T, "CHECK_SECONDS", 0.0)
    saved = torch.get_num_threads()
    yield readings
    torch.set_num_threads(saved)


def test_the_governor_goes_down_under_load_and_back_when_it_leaves(fake_load):
    fake_load += [0.1]
    g = T.ThreadGovernor(probe_seconds=0)
    assert g.choice.threads == 2 == torch.get_num_threads() and g.choice.why == "2 CPUs, quiet"
    fake_load += [0.2, 1.6]
    assert g.after_step() is None and g.choice.threads == 2
    line = g.after_step("epoch 1 step 40")
    assert line == "threads 2 -> 1 at epoch 1 step 40: other processes keep 1.6 of 2 CPUs busy"
    assert torch.get_num_threads() == 1
    fake_load += [0.0, 0.0]  # it waits SETTLE_CHECKS checks after a change
    assert g.after_step() is None and g.after_step() is None and g.choice.threads == 1
    fake_load += [0.4, 0.1]  # between RESTORE_BELOW and REDUCE_AT: not clearly gone yet
    assert g.after_step() is None
    assert g.after_step("epoch 2 step 3") == "threads 1 -> 2 at epoch 2 step 3: the other processes have gone"
    assert torch.get_num_threads() == 2
    assert [(c["from"], c["to"]) for c in g.take_changes()] == [(2, 1), (1, 2)] and g.take_changes() == []


def test_a_busy_machine_at_start_and_fixed_counts(fake_load, monkeypatch):
    fake_load += [1.9]
    g = T.ThreadGovernor(probe_seconds=0)
    assert g.choice.threads == 1 and "other processes keep 1.9 busy" in g.choice.why
    g = T.ThreadGovernor(requested=2)
    fake_load += [1.9]
    assert g.after_step() is None and g.choice.threads == 2 and g.choice.describe() == "2 threads (--threads 2)"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    g = T.ThreadGovernor()
    assert g.choice.fixed and g.choice.why == "OMP_NUM_THREADS=1" and g.after_step() is None
    with pytest.raises(ConfigError, match="--threads must be a positive integer"):
        T.ThreadGovernor(requested=0)


def test_the_meter_sees_a_busy_process():
    meter = T.LoadMeter()
    child = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 5\nwhile time.time() < end: pass"])
    try:
        time.sleep(0.3)
        meter.others()
        time.sleep(0.8)
        busy = meter.others()
    finally:
        child.kill()
        child.wait()
    assert busy > 0.6  # one busy process: about one core (more if the machine has other load)


def test_main_prints_and_records_the_threads(tmp_path):
    files = tiny_demo(tmp_path / "data", num_train=16, num_test=4)  # 2 steps: 1 step at warm-up LR 0 is refused
    r = run_py("main.py", *train_argv(files, tmp_path / "run", "--total_epoch", "1", "--threads", "1"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "\nthreads    1 thread (--threads 1)\n" in r.stdout
    entry = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[0])
    assert entry["threads"] == 1 and "thread_changes" not in entry
    assert json.loads((tmp_path / "run" / "args.json").read_text())["threads"] == 1


def test_the_other_torchrun_processes_of_the_node_are_not_load(fake_load, monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two processes, a budget of 2 CPUs each (the fixture's)
    fake_load += [2.0]  # the sibling process busy on its own 2 CPUs
    g = T.ThreadGovernor(probe_seconds=0)
    assert g.choice.threads == 2
    fake_load += [2.1, 3.8]  # the sibling, then the sibling and two busy processes
    assert g.after_step() is None and g.choice.threads == 2
    assert g.after_step() == "threads 2 -> 1: other processes keep 1.8 of 2 CPUs busy"


def test_a_fixed_count_above_the_cpus_is_capped_to_them_and_says_so(fake_load, monkeypatch, tmp_path):
    """--threads 1000 on 2 CPUs ran 1,000 OpenMP threads (a 4-second demo took 2 minutes, the header said
    '1000 threads'); the count is capped to the CPUs this process may use, and the header says why."""
    g = T.ThreadGovernor(requested=1000)
    assert (g.choice.threads, torch.get_num_threads(), g.choice.fixed) == (2, 2, True)
    assert g.choice.describe() == "2 threads (--threads 1000 capped to the CPUs this process may use: 2 CPUs)"
    assert T.ThreadGovernor(requested=2).choice.describe() == "2 threads (--threads 2)"  # at the budget: as typed
    monkeypatch.setenv("OMP_NUM_THREADS", "16")
    torch.set_num_threads(16)  # (what torch read from the variable at start)
    g = T.ThreadGovernor()
    assert (g.choice.threads, torch.get_num_threads()) == (2, 2) and g.after_step() is None
    assert g.choice.why == "OMP_NUM_THREADS=16 capped to the CPUs this process may use: 2 CPUs"
    monkeypatch.undo()
    files = tiny_demo(tmp_path / "data", num_train=16, num_test=4)  # 2 steps: 1 step at warm-up LR 0 is refused
    r = run_py("main.py", *train_argv(files, tmp_path / "run", "--total_epoch", "1", "--threads", "1000"))
    assert r.returncode == 0, r.stderr[-2000:]
    budget, why = T.cpu_budget()
    threads = f"{budget} thread{'s' if budget > 1 else ''}"
    assert f"\nthreads    {threads} (--threads 1000 capped to the CPUs this process may use: {why})\n" in r.stdout
    assert json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[0])["threads"] == budget
