"""Imported first by the entry scripts, before torch loads OpenMP: idle OpenMP threads spin only briefly
before they sleep (GOMP_SPINCOUNT 10000 instead of libgomp's 300000). With the default, a training
process whose 2 cores are shared with 2 busy processes kept 15-19% of its quiet speed; with this, 46-52%
(a fair share is 50%), and the quiet speed stays within the run-to-run noise
(``benchmarks/bench_train.py --contended``, small_cnn, 2-core AVX2 CPU). A value already set wins."""
import os

os.environ.setdefault("GOMP_SPINCOUNT", "10000")
