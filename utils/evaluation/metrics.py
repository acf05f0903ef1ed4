"""The paper's metrics on sigmoid scores (mAP, CP/CR/CF1, OP/OR/OF1, top-3), vectorised with numpy.

Label conventions, per entry of the target matrix:
- ``1`` positive. ``-1`` negative.
- ``0``: negative in binary files (COCO, trainval); *difficult* in VOC test files (any ``-1`` present,
  or ``voc=True``): left out of that class's AP and of the P/R counts.
- ``99`` (WIDER test, unspecified): left out of AP; counted as negative in P/R (the authors' rule).
- ``-99`` unknown (sparse files whose unlisted classes are unknown, e.g. OpenImages): left out of AP and
  of the P/R counts.

Ties: images with equal scores form one block; the precision at the end of the block is used
for every positive in it (the rule of scikit-learn's average_precision_score), so AP does not
depend on the order of the images.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from pipeline.data.labels import EVAL_UNKNOWN as UNKNOWN
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
    if np.isfinite(scores.sum()):  # fast path: a NaN or inf anywhere makes the sum non-finite
        return
    refuse_non_finite_rows(~np.isfinite(scores).all(axis=1), paths)


def refuse_non_finite_rows(bad: np.ndarray, paths: Optional[List[str]] = None) -> None:
    """One line naming the first images (``paths``, else their row numbers) where ``bad`` is true, if any."""
    if bad.any():
        rows = np.flatnonzero(bad)
        names = [paths[i] for i in rows[:5]] if paths is not None else [f"image {i}" for i in rows[:5]]
        more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
        raise MetricsError(f"NaN or infinite scores for {', '.join(map(str, names))}{more}")


def masks(targets: np.ndarray, voc: Optional[bool] = None):
    """(positive, negative-for-AP, valid-for-P/R or None when every entry is valid) boolean masks."""
    t = np.asarray(targets)
    if voc is None:
        voc = bool((t == -1).any())
    pos = t == 1
    if voc:
        neg_ap = t == -1
        valid_pr = t != 0
    else:
        neg_ap = (t == 0) | (t == -1)
        valid_pr = None  # 99 stays valid for P/R: it counts as negative
    if t.size and t.min() == UNKNOWN:  # unknown labels: out of P/R too (out of AP already: neither mask has them)
        valid_pr = (t != UNKNOWN) if valid_pr is None else valid_pr & (t != UNKNOWN)
    return pos, neg_ap, valid_pr, voc


def _transposed(a: np.ndarray, rows: int = 512) -> np.ndarray:
    """a.T as a C-contiguous array, copied in blocks that stay in cache (faster than one copy: the README's
    Development notes)."""
    out = np.empty((a.shape[1], a.shape[0]), dtype=a.dtype)
    for i in range(0, a.shape[0], rows):
        out[:, i:i + rows] = a[i:i + rows].T
    return out


def average_precision(scores: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Non-interpolated AP per column; entries neither positive nor negative are ignored.

    For each positive with score s, precision = #positives >= s / #(positives + negatives) >= s:
    counting everything tied with s is the tie-block rule above, independent of image order.
    The counts come from one sort of each class's scores (or of its negatives, when some entries are
    ignored) and binary searches, so no (N, C) arg-sort or gathers are needed.
    """
    S = _transposed(scores)  # a private copy: sorted in place below
    L = _transposed(pos.view(np.int8) + 2 * neg.view(np.int8))  # 1 positive, 2 negative, 0 ignored
    ap = np.full(S.shape[0], np.nan)
    for c, (row, labels) in enumerate(zip(S, L)):
        ps = np.sort(row[labels == 1])
        if ps.size == 0:
            continue
        tp = ps.size - np.searchsorted(ps, ps, side="left")
        if (labels == 0).any():
            negatives = np.sort(row[labels == 2])
            fp = negatives.size - np.searchsorted(negatives, ps, side="left")
        else:  # every entry counts: the negatives >= s are all entries >= s less the positives
            row.sort()
            fp = row.size - np.searchsorted(row, ps, side="left") - tp
        ap[c] = np.mean(tp / (tp + fp))
    return ap


def _column_counts(mask: np.ndarray) -> np.ndarray:
    """Trues per column of a boolean (N, C) matrix, as float64 (summing its bytes is the fast path)."""
    return mask.view(np.uint8).sum(axis=0, dtype=np.int64).astype(np.float64)


PR_CONVENTIONS = ("ours", "authors")


def class_counts(pred: np.ndarray, gt: np.ndarray, valid: Optional[np.ndarray]):
    """Per class: (true positives, predicted, ground truth) over the entries ``valid`` keeps (None: all)."""
    if valid is not None:
        pred = pred & valid
        gt = gt & valid
    return _column_counts(pred & gt), _column_counts(pred), _column_counts(gt)


def precision_recall(pred: np.ndarray, gt: np.ndarray, valid: Optional[np.ndarray],
                     convention: str = "ours") -> Dict[str, float]:
    """CP, CR, CF1, OP, OR, OF1 (x100) plus the mean of per-class F1 (model-zoo 'CF1').
    ``valid`` (None: all) masks the entries that count. A class with no prediction counts as one
    predicted in CP; with ``convention="authors"`` also in OP's denominator (the authors' code)."""
    return pr_from_counts(*class_counts(pred, gt, valid), convention)


def pr_from_counts(tp: np.ndarray, n_pred: np.ndarray, n_gt: np.ndarray, convention: str = "ours") -> Dict[str, float]:
    """precision_recall's figures from the per-class counts of true positives, predictions, ground truth.
    A class without positives has no recall (the authors' code divides by zero): it is left out of CR's
    mean, as it is out of mAP's; its predictions still count against CP."""
    p_c = tp / np.maximum(n_pred, 1)
    r_c = tp / np.maximum(n_gt, 1)
    cp = p_c.mean()
    cr = r_c[n_gt > 0].mean() if (n_gt > 0).any() else 0.0
    op = tp.sum() / max((np.maximum(n_pred, 1) if convention == "authors" else n_pred).sum(), 1.0)
    orr = tp.sum() / max(n_gt.sum(), 1.0)
    f1 = lambda p, r: 2 * p * r / (p + r) if p + r > 0 else 0.0  # noqa: E731
    with np.errstate(invalid="ignore", divide="ignore"):
        f1_c = np.where(p_c + r_c > 0, 2 * p_c * r_c / (p_c + r_c), 0.0)
    return {
        "CP": 100 * cp, "CR": 100 * cr, "CF1": 100 * f1(cp, cr),
        "OP": 100 * op, "OR": 100 * orr, "OF1": 100 * f1(op, orr),
        "CF1_mean_per_class": 100 * float(f1_c.mean()),
    }


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """(N, k) each row's k highest-scoring columns by k arg-max passes on a copy (each pass returns the first
    of tied maxima, so among ties the lower index comes first, as a stable descending sort)."""
    work = np.array(scores, dtype=np.float64 if scores.dtype == np.float64 else np.float32)
    rows = np.arange(len(work))
    out = np.empty((len(work), k), dtype=np.int64)
    for j in range(k):
        out[:, j] = work.argmax(axis=1)
        work[rows, out[:, j]] = -np.inf  # below every finite score: the next pass takes the next one
    return out


def top_k_mask(scores: np.ndarray, k: int) -> np.ndarray:
    """True at each row's k highest scores; among scores tied at the k-th place, the lower class
    indices are kept (as a stable descending sort would). No sort: k arg-max passes (each returns the
    first of tied maxima), or for large k or infinite scores one partial selection per row."""
    n, c = scores.shape
    k = min(k, c)
    if k <= 0:
        return np.zeros(scores.shape, dtype=bool)
    if k <= 4 and n and np.isfinite(scores.min()):
        mask = np.zeros(scores.shape, dtype=bool)
        mask[np.arange(n)[:, None], top_k_indices(scores, k)] = True
        return mask
    kth = np.partition(scores, c - k, axis=1)[:, c - k:c - k + 1]  # each row's k-th largest value
    mask = scores >= kth
    crowded = np.flatnonzero(mask.view(np.uint8).sum(axis=1, dtype=np.int32) > k)  # ties at the k-th place
    if crowded.size:
        sub = scores[crowded]
        above = sub > kth[crowded]
        tied = sub == kth[crowded]
        room = k - above.sum(axis=1, keepdims=True)
        mask[crowded] = above | (tied & (np.cumsum(tied, axis=1) <= room))
    return mask


def evaluate(scores: np.ndarray, targets: np.ndarray, threshold: float = 0.5, voc: Optional[bool] = None,
             paths: Optional[List[str]] = None, pr_convention: str = "ours") -> Report:
    """All metrics from sigmoid scores (N, C) and a target matrix (N, C).

    A score counts as predicted when ``score >= threshold``.
    """
    scores = np.asarray(scores)
    if scores.dtype not in (np.float32, np.float64):
        scores = scores.astype(np.float64)  # float32 (the model's sigmoid) stays: every comparison is exact
    targets = np.asarray(targets)
    check_inputs(scores, targets, paths)
    if targets.dtype != np.int8 and targets.size and targets.min() >= -128 and targets.max() <= 127:
        targets = targets.astype(np.int8)  # the label values fit; 8x less memory to scan below
    pos, neg_ap, valid_pr, voc = masks(targets, voc)
    ap = average_precision(scores, pos, neg_ap)
    defined = ~np.isnan(ap)
    m = float(100 * ap[defined].mean()) if defined.any() else float("nan")
    pred = scores >= threshold
    if pr_convention not in PR_CONVENTIONS:
        raise MetricsError(f"--pr_convention must be one of {', '.join(PR_CONVENTIONS)} (got {pr_convention!r})")
    tp, n_pred, n_gt = class_counts(pred, pos, valid_pr)
    overall = pr_from_counts(tp, n_pred, n_gt, pr_convention)
    # top-3: predictions outside a row's 3 best scores drop out, and only a row predicting more than 3
    # classes has any (a score >= threshold always outranks one below it)
    crowded = np.flatnonzero(pred.view(np.uint8).sum(axis=1, dtype=np.int32) > 3)
    if crowded.size:
        rows = slice(None) if crowded.size > len(scores) // 2 else crowded  # most rows: no gathers
        dropped = pred[rows] & ~top_k_mask(scores[rows], 3)
        d_tp, d_pred, _ = class_counts(dropped, pos[rows], None if valid_pr is None else valid_pr[rows])
        tp, n_pred = tp - d_tp, n_pred - d_pred
    top3 = pr_from_counts(tp, n_pred, n_gt, pr_convention)
    return Report(ap=ap, map=m, undefined_classes=[int(i) for i in np.flatnonzero(~defined)],
                  overall=overall, top3=top3, convention="voc" if voc else "binary",
                  extra={"has_ignored_99": bool((targets == IGNORE).any()), "pr_convention": pr_convention})
