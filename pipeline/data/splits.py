"""A validation split drawn from the training records (``main.py --val_split F``), on the label table.

The draw is a function of the table and ``--split_seed`` alone (not of ``--seed``: runs of several seeds
share one split). It is stratified: classes are visited from the rarest up, and a class with at least two
positive records that lacks a positive on one side gets one there (the first of its still unassigned
positives in the seeded order); the other records then fill the validation side in that order up to
``round(F * N)``. Some label patterns cannot give every class both sides (three classes whose positives
are the pairs {a, b}, {b, c}, {a, c}); those classes are returned, never hidden. Memory grows with the known
labels, not with records x classes: OpenImages' table is split without a dense matrix.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import numpy as np

from pipeline.data.labels import LabelTable
from pipeline.errors import DataError

UNASSIGNED, TRAIN, VAL = -1, 0, 1


@dataclass(frozen=True)
class Split:
    train: np.ndarray          # record indices of the file, ascending
    val: np.ndarray
    unsplit: List[int]         # classes with 2+ positives that could not get one on each side


def _positives_by_class(table: LabelTable, rank: np.ndarray):
    """(records, class start offsets, class counts): every positive record, grouped by class, each group
    in the seeded order."""
    rows, classes, values = table.entries()
    keep = values == 1
    rows, classes = rows[keep], classes[keep]
    order = np.lexsort((rank[rows], classes))
    counts = np.bincount(classes, minlength=table.num_classes)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return rows[order], starts, counts


def stratified_split(table: LabelTable, fraction: float, seed: int) -> Split:
    """Records of ``table`` split into training and validation, about ``fraction`` of them validation."""
    n = len(table)
    if n < 2:
        raise DataError(f"--val_split needs at least 2 training records (the file has {n})")
    if not table.has_labels:
        raise DataError("--val_split needs labelled training records")
    order = np.random.default_rng(seed).permutation(n)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    side = np.full(n, UNASSIGNED, dtype=np.int8)
    members_all, starts, counts = _positives_by_class(table, rank)
    unsplit = []
    for c in np.argsort(counts, kind="stable"):  # rarest first; classes with one positive cannot split
        if counts[c] < 2:
            continue
        members = members_all[starts[c]:starts[c] + counts[c]]
        for wanted in (VAL, TRAIN):
            sides = side[members]
            if (sides == wanted).any():
                continue
            free = members[sides == UNASSIGNED]
            if free.size:
                side[free[0]] = wanted
            elif int(c) not in unsplit:
                unsplit.append(int(c))
    n_val = min(n - 1, max(1, int(round(fraction * n))))
    free = order[side[order] == UNASSIGNED]
    side[free[:max(0, n_val - int((side == VAL).sum()))]] = VAL
    side[side == UNASSIGNED] = TRAIN
    if not (side == TRAIN).any():  # every record was needed on the validation side: keep one for training
        side[order[-1]] = TRAIN
    return Split(np.flatnonzero(side == TRAIN), np.flatnonzero(side == VAL), sorted(unsplit))
