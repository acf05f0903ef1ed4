"""Where a sweep's runs are launched: here (one after another, or ``--parallel N`` at once with the CPU
threads or GPUs divided between them), or on a Slurm cluster through submitit, each run one job (a torchrun
job when it has several GPUs or nodes). The sweep only builds command lines: processes, rendezvous and
scheduling are subprocess's, torchrun's and submitit's (and Slurm's)."""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

from pipeline.errors import ConfigError
from utils.experiments.plan import Launch, final_entry
from utils.output.fileio import make_folder

MAIN = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "main.py")
SUBMITIT_INSTALL = "pip install submitit"


@dataclass(frozen=True)
class Slot:
    """What one of the runs at a time gets: an environment (threads, GPUs) and how many processes it starts."""
    env: Dict[str, str]
    gpus: int = 0


def slots(parallel: int, gpus: int, cpus: int) -> List[Slot]:
    """``parallel`` shares of the machine: each its own GPUs (CUDA_VISIBLE_DEVICES) when there are GPUs, else
    an equal share of the CPUs as its thread count (OMP_NUM_THREADS, which main.py keeps fixed)."""
    if parallel == 1:
        return [Slot({}, gpus)]  # every GPU for each run in turn (torchrun when there are several)
    if gpus:
        if gpus < parallel:
            raise ConfigError(f"--parallel {parallel} with {gpus} GPUs: at most one run per GPU")
        per = gpus // parallel
        return [Slot({"CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in range(k * per, (k + 1) * per))}, per)
                for k in range(parallel)]
    return [Slot({"OMP_NUM_THREADS": str(max(1, cpus // parallel))}) for _ in range(parallel)]


def local_command(argv: Sequence[str], gpus: int) -> List[str]:
    if gpus > 1:  # one machine, several GPUs: torchrun starts one process per GPU
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(gpus), MAIN,
                *argv]
    return [sys.executable, MAIN, *argv]


def _die_with_parent() -> None:
    """In the child, before exec: end with the sweep, even when the sweep is killed with SIGKILL (Linux), so
    a sweep run again never finds its own orphan still training."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_here(launch: Launch, slot: Slot) -> int:
    """One run as a child process, its output appended to its log; returns its exit status."""
    make_folder(os.path.dirname(launch.log))
    cmd = local_command(launch.argv, slot.gpus)
    with open(launch.log, "a", encoding="utf-8") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')}: {shlex.join(cmd)}\n")
        log.flush()
        env = dict(os.environ, PYTHONUNBUFFERED="1", **slot.env)
        return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=os.getcwd(), env=env,
                              preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None).returncode


def launch_here(launches: List[Launch], parallel: int, done: Callable[[Launch, int], None]) -> None:
    """Every launch here, ``parallel`` at a time; ``done(launch, exit status)`` after each."""
    import torch
    shares = slots(parallel, torch.cuda.device_count() if torch.cuda.is_available() else 0,
                   len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if parallel == 1:
        for launch in launches:
            done(launch, run_here(launch, shares[0]))
        return
    free = list(range(parallel))

    def work(launch: Launch) -> None:
        k = free.pop()
        try:
            done(launch, run_here(launch, shares[k]))
        finally:
            free.append(k)
    pool = ThreadPoolExecutor(parallel)
    try:
        for f in [pool.submit(work, launch) for launch in launches]:
            f.result()
    finally:  # (Ctrl-C: the runs not started yet are dropped, not started one after another)
        pool.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True)
class Cluster:
    partition: Optional[str]   # None: submitit's local executor (the Slurm path without a cluster)
    nodes: int
    gpus_per_node: int
    cpus_per_task: int
    time_min: int


def cluster_command(launch: Launch, cluster: Cluster) -> List[str]:
    """The job's command: main.py, or torchrun over the job's nodes and GPUs (the c10d rendezvous on the job's
    first node), its output appended to the run's log."""
    main = shlex.join(launch.argv)
    if cluster.nodes > 1:
        run = (f"{shlex.quote(sys.executable)} -m torch.distributed.run --nnodes {cluster.nodes} --nproc_per_node "
               f"{max(1, cluster.gpus_per_node)} --rdzv_backend c10d --rdzv_id \"$SLURM_JOB_ID\" --rdzv_endpoint "
               "\"$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1):29500\" "
               f"{shlex.quote(MAIN)} {main}")
    else:
        run = shlex.join(local_command(launch.argv, cluster.gpus_per_node))
    return ["bash", "-c", f"PYTHONUNBUFFERED=1 {run} >> {shlex.quote(launch.log)} 2>&1"]


def launch_on_cluster(launches: List[Launch], cluster: Cluster, folder: str,
                      done: Callable[[Launch, int], None]) -> None:
    """Every launch as a submitit job (Slurm, or submitit's local executor), waiting for them all."""
    try:
        import submitit
        from submitit.helpers import CommandFunction
    except ImportError:
        raise ConfigError(f"--slurm needs the submitit package: {SUBMITIT_INSTALL}") from None
    executor = submitit.AutoExecutor(folder=os.path.join(folder, "slurm"),
                                     cluster="local" if cluster.partition is None else "slurm")
    params = dict(timeout_min=cluster.time_min, nodes=cluster.nodes, tasks_per_node=1,
                  cpus_per_task=cluster.cpus_per_task, name="csra-sweep")
    if cluster.gpus_per_node:
        params["gpus_per_node"] = cluster.gpus_per_node
    if cluster.partition is not None:
        params["slurm_partition"] = cluster.partition
    executor.update_parameters(**params)
    jobs = {}
    for launch in launches:
        make_folder(os.path.dirname(launch.log))
        job = executor.submit(CommandFunction(cluster_command(launch, cluster), verbose=False, cwd=os.getcwd(),
                                              env=None))  # (the job's own environment: Slurm's variables and GPUs)
        jobs[job.job_id] = (job, launch)
        print(f"submitted {launch.run.name} as job {job.job_id}")
    for job in submitit.helpers.as_completed([j for j, _ in jobs.values()]):
        try:
            job.result()
            status = 0
        except Exception:  # the job failed: its log says why
            status = 1
        done(jobs[job.job_id][1], status)


def outcome(folder: str, log: str, status: int) -> str:
    final = final_entry(folder)
    if status == 0 and final is not None:
        test = final.get("test_mAP")
        shown = f"test mAP {test:.2f}" if isinstance(test, (int, float)) else "no test labels"
        return f"{shown} (epoch {final.get('epoch')}, chosen on {final.get('selected_on')})"
    return f"failed (exit {status}): {last_error(log)}; its output: {log}"


def last_error(log: str) -> str:
    try:
        with open(log, encoding="utf-8", errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.strip()]
    except OSError:
        return "no output"
    errors = [ln for ln in lines if ln.startswith("error:")]
    return (errors or lines or ["no output"])[-1][:200]
