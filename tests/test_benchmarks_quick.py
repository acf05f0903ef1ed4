"""Every benchmark has a --quick mode that runs in seconds and prints its table (the full runs are for
people, not for the suite)."""
import json
import re
import time

import pytest

from helpers import run_py

BENCHMARKS = {  # script -> a line its table must hold
    "benchmarks/bench_train.py": r"train_step, off, NCHW\s+[0-9.]+\s+[0-9.]+",
    "benchmarks/bench_data.py": r"img/s",
    "benchmarks/bench_metrics.py": r"\d",
    "benchmarks/bench_report.py": r"report from saved scores in [0-9.]+ s",
    "benchmarks/bench_head.py": r"H=8",
    "benchmarks/bench_export.py": r"small_cnn",
    "benchmarks/profile_demo.py": r"training step",
    "benchmarks/bench_demo_variants.py": r"^asl\s+[0-9.]+",
    "benchmarks/bench_scale.py": r"^\s+10000\s+sparse\s+[0-9.]+",
}


@pytest.mark.parametrize("script", sorted(BENCHMARKS))
def test_quick_mode_runs_and_prints_its_table(script):
    if script.endswith("bench_export.py"):
        pytest.importorskip("onnxruntime")
    t0 = time.time()
    r = run_py(script, "--quick")
    assert r.returncode == 0, r.stderr[-2000:]
    assert re.search(BENCHMARKS[script], r.stdout, re.M), r.stdout[-2000:]
    assert time.time() - t0 < 60


def test_gpu_check_dry_run_lists_its_steps_anywhere():
    r = run_py("benchmarks/gpu_check.py", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "1. CUDA-only tests" in r.stdout and "4. evaluation" in r.stdout and "(under 10 minutes)" in r.stdout
    assert "5. CSRA head vs backbone" in r.stdout


def test_the_head_benchmark_tabulates_a_training_step_and_writes_its_figures(tmp_path):
    r = run_py("benchmarks/bench_head.py", "--train", "--quick", "--json", tmp_path / "h.json")
    assert r.returncode == 0, r.stderr[-2000:]
    assert re.search(r"^\s+1000\s+[0-9.]+\s+[0-9.]+\s+[0-9.]+", r.stdout, re.M), r.stdout[-2000:]
    figures = json.loads((tmp_path / "h.json").read_text())
    assert figures["head_vs_backbone_80"] > 0 and "cpu" in figures
