"""Time the metrics on a COCO-sized problem (40,137 x 80): the evaluator, the previous arg-sort
evaluator and a direct per-class Python loop written from the metric definitions, in the same run,
and check they agree on tie-free and on heavily tied scores.

    python benchmarks/bench_metrics.py [--n 40137] [--classes 80]
    python benchmarks/bench_metrics.py --quick   # 4,000 x 80

Full runtime on a 2-core CPU: about 40 seconds (the Python loop and the previous evaluator dominate).
"""
from __future__ import annotations

import os
import time

from utils.configuration.entry import ScriptParser

import numpy as np

from pipeline.models.runtime import cpu_has_native_bf16
from utils.evaluation.metrics import evaluate, masks, precision_recall


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


def coco_like(n: int, classes: int, separation: float = 1.5, seed: int = 0):
    """Synthetic (scores, targets) with about 2.9 positives per image, as COCO; tie-free scores."""
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, classes)) < 0.036).astype(np.int64)
    scores = 1 / (1 + np.exp(-rng.normal(separation * targets - separation / 1.5, 1.0)))
    return scores, targets


def previous_ap(scores: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """The evaluator before the rewrite (one full arg-sort per class row and gathers), for the
    identity check and the timing ratio."""
    S = np.ascontiguousarray(scores.T)
    n = S.shape[1]
    order = np.argsort(-S, axis=1)
    s = np.take_along_axis(S, order, axis=1)
    is_pos = np.take_along_axis(np.ascontiguousarray(pos.T), order, axis=1)
    is_neg = np.take_along_axis(np.ascontiguousarray(neg.T), order, axis=1)
    tp = np.cumsum(is_pos, axis=1, dtype=np.int64)
    fp = np.cumsum(is_neg, axis=1, dtype=np.int64)
    block_end = np.ones_like(s, dtype=bool)
    block_end[:, :-1] = s[:, 1:] != s[:, :-1]
    if not block_end.all():
        idx = np.where(block_end, np.arange(n)[None, :], n - 1)
        end = np.minimum.accumulate(idx[:, ::-1], axis=1)[:, ::-1]
        tp = np.take_along_axis(tp, end, axis=1)
        fp = np.take_along_axis(fp, end, axis=1)
    n_pos = is_pos.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp[is_pos] / (tp[is_pos] + fp[is_pos])
        ap = np.bincount(np.nonzero(is_pos)[0], weights=precision, minlength=S.shape[0]) / n_pos
    ap[n_pos == 0] = np.nan
    return ap


def previous_top_k(scores: np.ndarray, k: int) -> np.ndarray:
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    mask = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(mask, top, True, axis=1)
    return mask


def previous_evaluate(scores: np.ndarray, targets: np.ndarray) -> dict:
    scores = np.asarray(scores, dtype=np.float64)
    pos, neg, valid, _ = masks(targets)
    pred = scores >= 0.5
    return {"ap": previous_ap(scores, pos, neg), "overall": precision_recall(pred, pos, valid),
            "top3": precision_recall(pred & previous_top_k(scores, 3), pos, valid)}


def best_of(fn, reps: int = 5) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def max_difference(rep, prev: dict) -> float:
    d = float(np.nanmax(np.abs(rep.ap - prev["ap"])))
    for part in ("overall", "top3"):
        d = max(d, max(abs(getattr(rep, part)[k] - prev[part][k]) for k in prev[part]))
    return d


def coco_size_args(description: str, quick_classes: int = 80):
    """--n and --classes of a COCO-sized synthetic case (val2014: 40,137 x 80); --quick: 4,000 images (and at
    most ``quick_classes`` classes)."""
    p = ScriptParser(description=description)
    p.add_argument("--n", type=int, default=40137)
    p.add_argument("--classes", type=int, default=80)
    p.add_argument("--quick", action="store_true", help=f"4,000 images x at most {quick_classes} classes")
    a = p.parse_args()
    if a.quick:
        a.n, a.classes = min(a.n, 4000), min(a.classes, quick_classes)
    return a


def main() -> None:
    a = coco_size_args(__doc__)
    scores, targets = coco_like(a.n, a.classes)
    model_scores = scores.astype(np.float32)  # what val.py passes: the model's float32 sigmoid, int8 labels
    model_targets = targets.astype(np.int8)
    tied = np.round(scores, 2)  # 101 distinct values: heavy ties
    evaluate(scores[:100], targets[:100])  # warm-up
    print(f"{a.n} x {a.classes} scores; best of 5 runs each; CPU native bf16: {cpu_has_native_bf16()}, "
          f"{os.cpu_count()} cores, numpy {np.__version__}")
    t_new32 = best_of(lambda: evaluate(model_scores, model_targets))
    t_argsort = best_of(lambda: np.argsort(model_scores))  # the bar: one bare arg-sort of the same scores
    t_new64 = best_of(lambda: evaluate(scores, targets))
    t_old = best_of(lambda: previous_evaluate(scores, targets))
    print(f"evaluate, float32 scores + int8 labels (val.py's path):  {t_new32:.3f} s   "
          f"(x{t_new32 / t_argsort:.2f} one bare np.argsort of the same scores: {t_argsort:.3f} s; goal <= x1.5)")
    print(f"evaluate, float64 scores + int64 labels:                 {t_new64:.3f} s")
    print(f"previous evaluator (arg-sorts), float64:                 {t_old:.3f} s   (x{t_old / t_new64:.1f} slower)")
    for name, s in (("tie-free", scores), ("tied (2 decimals)", tied)):
        rep = evaluate(s, targets)
        print(f"{name}: max |new - previous| over AP, P/R, top-3 = {max_difference(rep, previous_evaluate(s, targets)):.1e}")
    t0 = time.perf_counter()
    ref = loop_map(scores.astype(np.float64), targets)
    t_loop = time.perf_counter() - t0
    rep = evaluate(scores, targets)
    print(f"per-class Python loop (mAP only): {t_loop:.3f} s   mAP {ref:.4f} vs {rep.map:.4f} "
          f"(|difference| {abs(rep.map - ref):.1e})")


if __name__ == "__main__":
    main()
