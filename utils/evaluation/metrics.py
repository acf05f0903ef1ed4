"""The paper's metrics on sigmoid scores (mAP, CP/CR/CF1, OP/OR/OF1, top-3), vectorised with numpy.

Label conventions, per entry of the target matrix:
- ``1`` positive. ``-1`` negative.
- ``0``: negative in binary files (COCO, trainval); *difficult* in VOC test files (any ``-1`` present,
  or ``voc=True``): left out of that class's AP and of the P/R counts.
- ``99`` (WIDER test, unspecified): left out of AP; counted as negative in P/R (the authors' rule).

Ties: images with equal scores form one block; the precision at the end of the block is used
for every positive in it (the rule of scikit-learn's average_precision_score), so AP does not
depend on the order of the images.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from pipeline.errors import CSRAError

IGNORE = 99


class MetricsError(CSRAError, ValueError):
    """Scores that cannot be evaluated (shapes, NaN)."""


@dataclass
class Report:
    ap: np.ndarray                       # (C,) in [0, 1], nan where undefined
    map: float                           # x100, over classes with a defined AP
    undefined_classes: List[int]         # classes left out of the mean (no positive)
    overall: Dict[str, float]            # CP, CR, CF1, OP, OR, OF1, CF1_mean_per_class (x100)
    top3: Dict[str, float]
    convention: str = "binary"
    extra: Dict[str, object] = field(default_factory=dict)


def check_inputs(scores: np.ndarray, targets: np.ndarray, paths: Optional[List[str]] = None) -> None:
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise MetricsError(f"scores have shape {tuple(scores.shape)}, targets have shape {tuple(targets.shape)}")
    bad = ~np.isfinite(scores).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        names = [paths[i] for i in rows[:5]] if paths is not None else [f"image {i}" for i in rows[:5]]
        more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
        raise MetricsError(f"NaN or infinite scores for {', '.join(map(str, names))}{more}")


def masks(targets: np.ndarray, voc: Optional[bool] = None):
    """(positive, negative-for-AP, valid-for-P/R) boolean masks from a target matrix."""
    t = np.asarray(targets)
    if voc is None:
        voc = bool((t == -1).any())
    pos = t == 1
    if voc:
        neg_ap = t == -1
        valid_pr = t != 0
    else:
        neg_ap = (t == 0) | (t == -1)
        valid_pr = np.ones_like(pos)  # 99 stays valid for P/R: it counts as negative
    return pos, neg_ap, valid_pr, voc


def average_precision(scores: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Non-interpolated AP per column; entries neither positive nor negative are ignored.

    Works on (C, N) rows for memory locality. The sort need not be stable: within a tie block
    every positive gets the precision at the block's end, whatever the order inside it.
    """
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
    if not block_end.all():  # ties: read the counts at the end of each block
        idx = np.where(block_end, np.arange(n)[None, :], n - 1)
        end = np.minimum.accumulate(idx[:, ::-1], axis=1)[:, ::-1]
        tp = np.take_along_axis(tp, end, axis=1)
        fp = np.take_along_axis(fp, end, axis=1)
    n_pos = is_pos.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision_sum = (tp[is_pos] / (tp[is_pos] + fp[is_pos]))
        row = np.nonzero(is_pos)[0]
        ap = np.bincount(row, weights=precision_sum, minlength=S.shape[0]) / n_pos
    ap[n_pos == 0] = np.nan
    return ap


def precision_recall(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> Dict[str, float]:
    """CP, CR, CF1, OP, OR, OF1 (x100) plus the mean of per-class F1 (model-zoo 'CF1')."""
    pred = pred & valid
    gt = gt & valid
    tp = (pred & gt).sum(axis=0).astype(np.float64)
    n_pred = pred.sum(axis=0).astype(np.float64)
    n_gt = gt.sum(axis=0).astype(np.float64)
    p_c = tp / np.maximum(n_pred, 1)
    r_c = tp / np.maximum(n_gt, 1)
    cp, cr = p_c.mean(), r_c.mean()
    op = tp.sum() / max(n_pred.sum(), 1.0)
    orr = tp.sum() / max(n_gt.sum(), 1.0)
    f1 = lambda p, r: 2 * p * r / (p + r) if p + r > 0 else 0.0  # noqa: E731
    with np.errstate(invalid="ignore", divide="ignore"):
        f1_c = np.where(p_c + r_c > 0, 2 * p_c * r_c / (p_c + r_c), 0.0)
    return {
        "CP": 100 * cp, "CR": 100 * cr, "CF1": 100 * f1(cp, cr),
        "OP": 100 * op, "OR": 100 * orr, "OF1": 100 * f1(op, orr),
        "CF1_mean_per_class": 100 * float(f1_c.mean()),
    }


def top_k_mask(scores: np.ndarray, k: int) -> np.ndarray:
    """True at each row's k highest scores (ties broken by lower class index)."""
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    mask = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(mask, top, True, axis=1)
    return mask


def evaluate(scores: np.ndarray, targets: np.ndarray, threshold: float = 0.5, voc: Optional[bool] = None,
             paths: Optional[List[str]] = None) -> Report:
    """All metrics from sigmoid scores (N, C) and a target matrix (N, C).

    A score counts as predicted when ``score >= threshold``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    check_inputs(scores, targets, paths)
    pos, neg_ap, valid_pr, voc = masks(targets, voc)
    ap = average_precision(scores, pos, neg_ap)
    defined = ~np.isnan(ap)
    m = float(100 * ap[defined].mean()) if defined.any() else float("nan")
    pred = scores >= threshold
    overall = precision_recall(pred, pos, valid_pr)
    top3 = precision_recall(pred & top_k_mask(scores, 3), pos, valid_pr)
    return Report(ap=ap, map=m, undefined_classes=[int(i) for i in np.flatnonzero(~defined)],
                  overall=overall, top3=top3, convention="voc" if voc else "binary",
                  extra={"has_ignored_99": bool((targets == IGNORE).any())})
