"""Intra-op threads that fit the CPU actually available, at start and while training.

On a shared machine the thread count decides how badly a run falls: with 2 threads on 2 cores and two
busy processes beside it, a training step can drop to a tenth of its quiet speed (each step waits for
its slowest thread, and a descheduled thread stalls the others), while one thread keeps most of its own
speed. So the count is

- the CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (containers), shared
  with the other torchrun processes of the node (``LOCAL_WORLD_SIZE``);
- minus what other processes keep busy on those CPUs (``/proc/stat`` of the allowed CPUs minus this
  process's own CPU time; DataLoader workers count as others: they need their cores too),

decided at start and again every few seconds while training: down when others keep at least half a
core busy, back up when they have gone. ``--threads N`` or ``OMP_NUM_THREADS`` fix the count, capped to
the CPUs this process may use (more threads than CPUs only take turns: 1,000 threads on 2 CPUs made a
4-second demo take 2 minutes); the header says so.

Changing the count changes how float sums are split between threads, so a resumed run is bit-exact with
an uninterrupted one when both ran with the same count (fix it with ``--threads`` when you need that).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch

from pipeline.errors import ConfigError

CHECK_SECONDS = 2.0       # how often the training watch looks at the load
REDUCE_AT = 0.5           # others' busy cores that make a thread too many
RESTORE_BELOW = 0.35      # others' busy cores under which the threads come back
SETTLE_CHECKS = 2         # checks to wait after a change before the next one


def cgroup_quota(root: str = "/sys/fs/cgroup") -> Optional[float]:
    """The CPU quota of this process's cgroup in cores (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), or None."""
    try:
        with open(os.path.join(root, "cpu.max")) as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(root, "cpu", "cpu.cfs_quota_us")) as f:
            quota = int(f.read().strip())
        with open(os.path.join(root, "cpu", "cpu.cfs_period_us")) as f:
            period = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return None if quota < 0 or period <= 0 else quota / period


def allowed_cpus() -> List[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def node_processes() -> int:
    """The training processes of this node (torchrun's LOCAL_WORLD_SIZE; 1 without torchrun)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)


def cpu_budget() -> Tuple[int, str]:
    """(CPUs this process may use, why): the affinity mask, a cgroup quota, the torchrun processes of this node."""
    cpus = len(allowed_cpus())
    budget, why = cpus, f"{cpus} CPU{'s' if cpus > 1 else ''}"
    quota = cgroup_quota()
    if quota is not None and quota < budget:
        budget, why = max(1, math.floor(quota)), why + f", cgroup quota {quota:g}"
    share = node_processes()
    if share > 1:
        budget, why = max(1, budget // share), why + f" shared by {share} processes"
    return budget, why


class LoadMeter:
    """Cores that other processes kept busy on the allowed CPUs between two readings."""

    def __init__(self):
        self.cpus = set(allowed_cpus())
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.last = self._read()

    def _read(self) -> Optional[Tuple[float, float, float]]:
        try:
            with open("/proc/stat") as f:
                lines = [ln.split() for ln in f if ln.startswith("cpu") and ln[3:4].isdigit()]
        except OSError:
            return None
        busy = 0
        for parts in lines:
            if int(parts[0][3:]) in self.cpus:
                user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in parts[1:9])
                busy += user + nice + system + irq + softirq + steal
        return busy / self.tick, time.process_time(), time.monotonic()

    def others(self) -> float:
        """Busy cores of other processes since the last call (0 where /proc/stat cannot be read)."""
        now = self._read()
        before, self.last = self.last, now
        if now is None or before is None or now[2] <= before[2]:
            return 0.0
        busy, own, wall = (a - b for a, b in zip(now, before))
        return max(0.0, (busy - own) / wall)


@dataclass
class ThreadChoice:
    threads: int
    budget: int
    why: str                    # e.g. "2 CPUs, quiet" or "--threads 1"
    fixed: bool
    changes: List[dict] = field(default_factory=list)

    def describe(self) -> str:
        return f"{self.threads} thread{'s' if self.threads > 1 else ''} ({self.why})"


def fits(budget: int, others: float) -> int:
    """Threads for ``budget`` CPUs when other processes keep ``others`` cores busy."""
    if others < REDUCE_AT:
        return budget
    return max(1, min(budget, math.floor(budget - others + 0.5)))


def capped(threads: int, budget: int, budget_why: str, source: str) -> ThreadChoice:
    """A fixed count, at most the CPUs this process may use; the choice's reason says when it was capped."""
    if threads <= budget:
        return ThreadChoice(threads, budget, source, fixed=True)
    return ThreadChoice(budget, budget, f"{source} capped to the CPUs this process may use: {budget_why}", fixed=True)


class ThreadGovernor:
    """Sets torch's intra-op threads at start and, when the caller reports its steps, while training
    (``after_step``). The node's other torchrun processes are not "other" load: the budget is already
    their share, so the cores their budgets hold are taken off what the meter sees."""

    def __init__(self, requested: Optional[int] = None, probe_seconds: float = 0.2):
        self.meter = LoadMeter()
        budget, why = cpu_budget()
        self.siblings = (node_processes() - 1) * budget  # cores this node's other training processes may use
        user_env = os.environ.get("OMP_NUM_THREADS")
        if requested is not None:
            if requested < 1:
                raise ConfigError(f"--threads must be a positive integer (got {requested})")
            self.choice = capped(requested, budget, why, f"--threads {requested}")
        elif user_env:
            self.choice = capped(torch.get_num_threads(), budget, why, f"OMP_NUM_THREADS={user_env}")
        else:
            time.sleep(probe_seconds)  # what others do while this process waits
            others = self.others()
            threads = fits(budget, others)
            load = "quiet" if others < REDUCE_AT else f"other processes keep {others:.1f} busy"
            self.choice = ThreadChoice(threads, budget, f"{why}, {load}", fixed=False)
        self.apply()
        self.next_check = time.monotonic() + CHECK_SECONDS
        self.wait = 0

    def others(self) -> float:
        """Busy cores of processes outside this run since the last reading."""
        return max(0.0, self.meter.others() - self.siblings)

    def apply(self) -> None:
        """Set torch's threads to this governor's choice (torch's count is one per process)."""
        torch.set_num_threads(self.choice.threads)

    def after_step(self, where: str = "") -> Optional[str]:
        """Every CHECK_SECONDS, fit the threads to the load; returns a line to print when they change."""
        if self.choice.fixed or time.monotonic() < self.next_check:
            return None
        self.next_check = time.monotonic() + CHECK_SECONDS
        others = self.others()
        if self.wait:
            self.wait -= 1
            return None
        now, budget = self.choice.threads, self.choice.budget
        want = fits(budget, others)
        if want == budget and now < budget and others >= RESTORE_BELOW:
            want = now  # back to every CPU only once the others are clearly gone
        if want == now:
            return None
        torch.set_num_threads(want)
        self.choice.threads = want
        self.wait = SETTLE_CHECKS
        self.choice.changes.append({"where": where, "from": now, "to": want, "others": round(others, 2)})
        reason = f"other processes keep {others:.1f} of {self.choice.budget} CPUs busy" if want < now else \
            "the other processes have gone"
        return f"threads {now} -> {want}{' at ' + where if where else ''}: {reason}"

    def take_changes(self) -> List[dict]:
        """The changes since the last call (for the epoch's log line)."""
        out, self.choice.changes = self.choice.changes, []
        return out
