"""Imported first by the entry scripts, before torch loads OpenMP: idle OpenMP threads spin only briefly
before they sleep (GOMP_SPINCOUNT 10000 instead of libgomp's 300000), so a training process whose cores are
shared with busy processes keeps about its fair share of them, and its quiet speed stays within the
run-to-run noise (measured with ``benchmarks/bench_train.py --contended``: the README's Benchmarks). A value
already set wins."""
import os

os.environ.setdefault("GOMP_SPINCOUNT", "10000")
