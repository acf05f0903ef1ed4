"""The paper's metrics from a label table (``pipeline.data.labels.LabelTable``) instead of a dense target
matrix, for OpenImages-size evaluation (125,436 images x 9,605 classes: 4.8 GB of float32 scores).

The numbers are the dense evaluator's (``metrics.evaluate``) on the same labels, entry for entry: AP over
each class's known entries with the tie-block rule, P/R at the threshold over the known entries (all
entries when unlisted classes are negative), top-3 from each row's three highest scores (the first of
tied maxima). Only the listed labels are gathered; the score matrix is read, never copied whole: the
top-3 passes and the unlisted-negative counts go through blocks of rows, so the extra memory is a block
and the label arrays. The matrix may be a read-only memory map (``np.load(..., mmap_mode="r")``).
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np

from pipeline.data.labels import LabelTable
from utils.evaluation.metrics import (MetricsError, PR_CONVENTIONS, Report, pr_from_counts, refuse_non_finite_rows,
                                      top_k_indices)

BLOCK_BYTES = 64 << 20  # rows are read in blocks of about this size


def _rows_per_block(c: int) -> int:
    return max(1, BLOCK_BYTES // (4 * max(c, 1)))


def _check(scores: np.ndarray, table: LabelTable, n: int) -> None:
    if scores.ndim != 2 or scores.shape != (n, table.num_classes):
        raise MetricsError(f"scores have shape {tuple(scores.shape)}, the labels {n} x {table.num_classes}")
    if table.values.size and not np.isin(np.unique(table.values), (0, 1)).all():
        raise MetricsError("this evaluator reads positives and negatives only (the sparse format's labels)")


def top3(scores: np.ndarray) -> np.ndarray:
    """(N, 3) each row's three highest-scoring classes (``metrics.top_k_indices``), block by block."""
    n, c = scores.shape
    out = np.empty((n, min(3, c)), dtype=np.int64)
    step = _rows_per_block(c)
    for a in range(0, n, step):
        out[a:a + step] = top_k_indices(scores[a:a + step], out.shape[1])
    return out


def column_counts_at_least(scores: np.ndarray, threshold: float) -> np.ndarray:
    """Per class, the rows scoring at least ``threshold``, read block by block."""
    counts = np.zeros(scores.shape[1], dtype=np.int64)
    step = _rows_per_block(scores.shape[1])
    for a in range(0, scores.shape[0], step):
        counts += (scores[a:a + step] >= threshold).view(np.uint8).sum(axis=0, dtype=np.int64)
    return counts


def average_precision_sparse(scores: np.ndarray, s: np.ndarray, c: np.ndarray, v: np.ndarray,
                             unknown: bool) -> np.ndarray:
    """Per class: AP over its positives and its negatives (the listed ones, or every other row of
    ``scores``); ``s`` holds the listed entries' scores, ``c`` their classes, ``v`` their labels."""
    C = scores.shape[1]
    order = np.lexsort((s, c))  # by class, then by score
    c_sorted, s_sorted, v_sorted = c[order], s[order], v[order]
    bounds = np.searchsorted(c_sorted, np.arange(C + 1))
    ap = np.full(C, np.nan)
    columns = None if unknown else _ColumnCache(scores)
    for k in np.flatnonzero(np.diff(bounds)):
        seg_s, seg_v = s_sorted[bounds[k]:bounds[k + 1]], v_sorted[bounds[k]:bounds[k + 1]]
        ps = seg_s[seg_v == 1]
        if ps.size == 0:
            continue
        tp = ps.size - np.searchsorted(ps, ps, side="left")
        if unknown:
            negatives = seg_s[seg_v == 0]
            fp = negatives.size - np.searchsorted(negatives, ps, side="left")
        else:  # every other row is a negative: count the whole column above each positive
            col = columns.sorted_column(k)
            fp = col.size - np.searchsorted(col, ps, side="left") - tp
        ap[k] = np.mean(tp / (tp + fp))
    return ap


class _ColumnCache:
    """Sorted columns of the score matrix, made a block of columns at a time (a strided column copy
    per class would read the whole matrix once per class)."""

    def __init__(self, scores: np.ndarray, width: int = 64):
        self.scores, self.width, self.first, self.block = scores, width, -1, None

    def sorted_column(self, k: int) -> np.ndarray:
        first = k - k % self.width
        if first != self.first:
            block = np.ascontiguousarray(np.asarray(self.scores[:, first:first + self.width]).T)
            block.sort(axis=1)
            self.first, self.block = first, block
        return self.block[k - first]


def evaluate_table(scores: np.ndarray, table: LabelTable, rows: Optional[np.ndarray] = None, threshold: float = 0.5,
                   pr_convention: str = "ours", paths: Optional[List[str]] = None) -> Report:
    """The dense evaluator's Report for ``scores`` (N, C) against the table's labels of ``rows`` (N
    records; all when None). Non-finite scores stop with the first images named (``paths``, else row
    numbers): any among the listed labels', and NaN or +inf anywhere (each row's arg-max takes them first,
    so its top-3 shows them; a -inf elsewhere only ranks lowest)."""
    if pr_convention not in PR_CONVENTIONS:
        raise MetricsError(f"--pr_convention must be one of {', '.join(PR_CONVENTIONS)} (got {pr_convention!r})")
    n = len(table) if rows is None else len(rows)
    _check(scores, table, n)
    C = table.num_classes
    r, c, v = table.entries(rows)
    c = c.astype(np.int64)
    s = np.asarray(scores[r, c])  # the listed entries' scores, gathered once
    best = top3(scores)  # the top-3 predictions: among each row's three best, those at the threshold
    tr = np.repeat(np.arange(n), best.shape[1])
    tc = best.ravel()
    top_scores = np.asarray(scores[tr, tc])
    if not (np.isfinite(s).all() and np.isfinite(top_scores).all()):
        bad = np.bincount(r[~np.isfinite(s)], minlength=n) > 0
        refuse_non_finite_rows(bad | ~np.isfinite(top_scores.reshape(best.shape)).all(axis=1), paths)
    ap = average_precision_sparse(scores, s, c, v, table.unknown)
    defined = ~np.isnan(ap)
    m = float(100 * ap[defined].mean()) if defined.any() else float("nan")
    pos = v == 1
    hit = s >= threshold
    n_gt = np.bincount(c[pos], minlength=C).astype(np.float64)
    tp = np.bincount(c[pos & hit], minlength=C).astype(np.float64)
    n_pred = np.bincount(c[hit], minlength=C).astype(np.float64) if table.unknown else \
        column_counts_at_least(scores, threshold).astype(np.float64)
    overall = pr_from_counts(tp, n_pred, n_gt, pr_convention)
    keep = top_scores >= threshold
    tr, tc = tr[keep], tc[keep]
    keys, listed = tr * C + tc, r * C + c
    tp3 = np.bincount(tc[_member(keys, np.sort(listed[pos]))], minlength=C).astype(np.float64)
    counted = _member(keys, np.sort(listed)) if table.unknown else np.ones(len(keys), dtype=bool)
    n_pred3 = np.bincount(tc[counted], minlength=C).astype(np.float64)
    top = pr_from_counts(tp3, n_pred3, n_gt, pr_convention)
    return Report(ap=ap, map=m, undefined_classes=[int(i) for i in np.flatnonzero(~defined)], overall=overall,
                  top3=top, convention="binary", extra={"has_ignored_99": False, "pr_convention": pr_convention,
                                                        "unknown_labels": table.unknown})


def _member(keys: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    if sorted_set.size == 0:
        return np.zeros(len(keys), dtype=bool)
    at = np.searchsorted(sorted_set, keys)
    return sorted_set[np.minimum(at, sorted_set.size - 1)] == keys
