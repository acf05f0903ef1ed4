"""Time the vectorised metrics on a COCO-sized problem (40,137 x 80) against a direct per-class
Python loop written from the metric definitions, in the same run, and check they agree.

    python benchmarks/bench_metrics.py [--n 40137] [--classes 80]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from utils.evaluation.metrics import evaluate  # noqa: E402


def loop_map(scores: np.ndarray, targets: np.ndarray) -> float:
    aps = []
    for c in range(scores.shape[1]):
        order = sorted(range(scores.shape[0]), key=lambda i: -scores[i, c])
        hits, total = 0, 0.0
        for rank, i in enumerate(order, start=1):
            if targets[i, c] == 1:
                hits += 1
                total += hits / rank
        if hits:
            aps.append(total / hits)
    return 100 * sum(aps) / len(aps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=40137)
    p.add_argument("--classes", type=int, default=80)
    a = p.parse_args()
    rng = np.random.default_rng(0)
    targets = (rng.random((a.n, a.classes)) < 0.036).astype(np.int64)  # ~2.9 labels per image, as COCO
    scores = 1 / (1 + np.exp(-rng.normal(1.5 * targets - 1.0, 1.0)))  # tie-free, so both rank alike
    evaluate(scores[:100], targets[:100])  # warm-up
    t0 = time.perf_counter()
    rep = evaluate(scores, targets)
    t_vec = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = loop_map(scores.astype(np.float64), targets)
    t_loop = time.perf_counter() - t0
    print(f"{a.n} x {a.classes} scores")
    print(f"vectorised (mAP + P/R + top-3): {t_vec:.3f} s   mAP {rep.map:.4f}")
    print(f"per-class Python loop (mAP only): {t_loop:.3f} s   mAP {ref:.4f}")
    print(f"speed-up x{t_loop / t_vec:.0f}; |difference| {abs(rep.map - ref):.2e}")


if __name__ == "__main__":
    main()
