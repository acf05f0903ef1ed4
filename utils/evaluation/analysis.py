"""Per-class analysis behind the evaluation report: PR curves, best-F1 thresholds, per-class counts,
a global threshold sweep and the worst mistakes. Pure numpy; the conventions are the evaluator's
(``metrics.masks``): AP counts positives and AP-negatives, P/R counts the P/R-valid entries."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from utils.evaluation.metrics import class_counts, masks, precision_recall


@dataclass
class ClassCurve:
    recall: np.ndarray      # recall after each tie block that holds a positive (increasing)
    precision: np.ndarray   # precision at the end of that block


def _descending_blocks(s: np.ndarray, *flags: np.ndarray):
    """Sort by score (descending) and return the block-end scores and cumulative flag counts there.
    Counts at block ends do not depend on the order inside a block, so the sort need not be stable."""
    order = np.argsort(-s)
    s = s[order]
    ends = np.flatnonzero(np.append(s[1:] != s[:-1], True))
    return s[ends], [np.cumsum(f[order])[ends] for f in flags]


def pr_curve(scores: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> ClassCurve:
    """The stepwise PR curve of one class whose area, sum((r_k - r_{k-1}) * p_k), is its AP: one
    point per tie block holding a positive, at the block's end (the evaluator's tie rule)."""
    n_pos = int(pos.sum())
    if n_pos == 0:  # (also a class none of whose labels is known)
        return ClassCurve(np.zeros(0), np.zeros(0))
    counted = pos | neg
    _, (tp, fp) = _descending_blocks(scores[counted], pos[counted].astype(np.int64), neg[counted].astype(np.int64))
    gained = np.diff(np.concatenate([[0], tp])) > 0
    return ClassCurve(tp[gained] / n_pos, tp[gained] / (tp[gained] + fp[gained]))


def best_f1_threshold(scores: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> Tuple[float, float]:
    """(threshold, F1): predicting ``score >= threshold`` for this class gives the best F1 over every
    distinct score (ties of F1 go to the higher cut). The threshold lies halfway between the lowest score
    kept and the next one below (halfway to 0 when every score is kept), not on a score: the image that
    set it stays on its side when another backend (ONNX, another precision) scores it a hair differently.
    (0.5, 0.0) when there is no positive."""
    s, g = scores[valid], gt[valid]
    n_gt = int(g.sum())
    if n_gt == 0 or s.size == 0:
        return 0.5, 0.0
    values, (tp, n_pred) = _descending_blocks(s, g.astype(np.int64), np.ones_like(g, dtype=np.int64))
    f1 = 2 * tp / (n_pred + n_gt)
    k = int(np.argmax(f1))  # first maximum = highest cut among equals
    below = float(values[k + 1]) if k + 1 < len(values) else min(0.0, float(values[k]))
    return (float(values[k]) + below) / 2, float(f1[k])


@dataclass
class ClassAnalysis:
    ap: np.ndarray
    positives: np.ndarray
    predicted: np.ndarray
    tp: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    best_threshold: np.ndarray
    best_f1: np.ndarray
    curves: List[ClassCurve]
    sweep: Dict[str, np.ndarray]          # thresholds, CF1, OF1


def analyse(scores: np.ndarray, targets: np.ndarray, ap: np.ndarray, threshold: float = 0.5,
            pr_convention: str = "ours", sweep: Optional[Dict[str, np.ndarray]] = None) -> ClassAnalysis:
    """Per-class counts, PR curves, best-F1 thresholds and the global-threshold sweep (``sweep``: when the
    caller has it already)."""
    scores = np.asarray(scores, dtype=np.float64)
    pos, neg, pr_valid, _ = masks(np.asarray(targets))
    tp, n_pred, n_gt = class_counts(scores >= threshold, pos, pr_valid)
    valid = np.ones_like(pos) if pr_valid is None else pr_valid
    gt = pos & valid
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(n_pred > 0, tp / np.maximum(n_pred, 1), 0.0)
        r = np.where(n_gt > 0, tp / np.maximum(n_gt, 1), 0.0)
        f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    thresholds, best_f1 = best_f1_thresholds(scores, gt, valid)
    curves = [pr_curve(scores[:, c], pos[:, c], neg[:, c]) for c in range(scores.shape[1])]
    return ClassAnalysis(ap=ap, positives=pos.sum(0), predicted=n_pred, tp=tp, precision=p, recall=r, f1=f1,
                         best_threshold=thresholds, best_f1=best_f1, curves=curves,
                         sweep=sweep or threshold_sweep(scores, targets, pr_convention))


def best_f1_thresholds(scores: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Every class's (best-F1 threshold, its F1), from the P/R ground truth ``gt`` among ``valid`` entries."""
    best = [best_f1_threshold(scores[:, c], gt[:, c], valid[:, c]) for c in range(scores.shape[1])]
    return np.array([b[0] for b in best]), np.array([b[1] for b in best])


def class_thresholds(scores: np.ndarray, targets: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Every class's best-F1 threshold and its F1 on these scores (the evaluator's P/R conventions)."""
    scores = np.asarray(scores, dtype=np.float64)
    pos, _, pr_valid, _ = masks(np.asarray(targets))
    valid = np.ones_like(pos) if pr_valid is None else pr_valid
    return best_f1_thresholds(scores, pos & valid, valid)


SWEEP_THRESHOLDS = np.round(np.arange(0.05, 0.951, 0.05), 2)


def threshold_sweep(scores: np.ndarray, targets: np.ndarray, pr_convention: str = "ours") -> Dict[str, np.ndarray]:
    """CF1 and OF1 when one threshold (0.05, 0.10, ..., 0.95) is used for every class."""
    pos, _, pr_valid, _ = masks(np.asarray(targets))
    cf1, of1 = [], []
    for t in SWEEP_THRESHOLDS:
        d = precision_recall(np.asarray(scores) >= t, pos, pr_valid, pr_convention)
        cf1.append(d["CF1"])
        of1.append(d["OF1"])
    return {"thresholds": SWEEP_THRESHOLDS, "CF1": np.array(cf1), "OF1": np.array(of1)}


def best_global_threshold(sweep: Dict[str, np.ndarray]) -> Tuple[float, float, float]:
    """(threshold, its CF1, the CF1 at 0.5) of the sweep's best CF1 (the lower threshold on a tie)."""
    k = int(np.argmax(sweep["CF1"]))
    half = int(np.argmin(np.abs(sweep["thresholds"] - 0.5)))
    return float(sweep["thresholds"][k]), float(sweep["CF1"][k]), float(sweep["CF1"][half])


def worst_mistakes(scores: np.ndarray, targets: np.ndarray, c: int, k: int = 4,
                   pos_neg: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> Tuple[List[int], List[int]]:
    """Image indices of class ``c``'s k highest-scoring negatives (false positives first) and k
    lowest-scoring positives (false negatives first); difficult and unspecified entries are skipped.
    ``pos_neg``: the (positive, negative) masks when the caller has them already."""
    pos, neg = pos_neg if pos_neg is not None else masks(np.asarray(targets))[:2]
    s = np.asarray(scores, dtype=np.float64)[:, c]
    negatives, positives = np.flatnonzero(neg[:, c]), np.flatnonzero(pos[:, c])
    fp = negatives[np.argsort(-s[negatives], kind="stable")][:k]
    fn = positives[np.argsort(s[positives], kind="stable")][:k]
    return fp.tolist(), fn.tolist()


def worst_classes(ap: np.ndarray, n: Optional[int]) -> List[int]:
    """Classes by AP, worst first (classes without an AP last); all of them when ``n`` is None."""
    order = sorted(range(len(ap)), key=lambda c: (np.isnan(ap[c]), ap[c]))
    return order if n is None else order[:n]
