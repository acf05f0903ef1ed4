"""Readable tables of the metrics, JSON export, saved scores and VOC2012 submission files."""
from __future__ import annotations

import os
from typing import List, Optional, Sequence

import numpy as np

from utils.evaluation.analysis import best_global_threshold, threshold_sweep
from utils.evaluation.metrics import Report
from utils.fileio import atomic_write, make_folder, write_json_atomic

KEYS = ["CP", "CR", "CF1", "OP", "OR", "OF1"]


def class_name(names: Optional[Sequence[str]], i: int) -> str:
    return names[i] if names is not None and i < len(names) else f"class_{i}"


def format_report(report: Report, class_names: Optional[Sequence[str]] = None, per_class: bool = True) -> str:
    lines = []
    lines.append(f"mAP: {report.map:.2f}  (non-interpolated AP, mean over {len(report.ap) - len(report.undefined_classes)}"
                 f" of {len(report.ap)} classes)")
    if report.undefined_classes:
        names = ", ".join(class_name(class_names, i) for i in report.undefined_classes)
        lines.append(f"warning: no positive image for {names}: AP undefined, left out of the mean")
    lines.append("")
    lines.append(f"{'':8s}" + "".join(f"{k:>8s}" for k in KEYS) + f"{'CF1(zoo)':>10s}")
    for label, d in (("all", report.overall), ("top-3", report.top3)):
        lines.append(f"{label:8s}" + "".join(f"{d[k]:8.2f}" for k in KEYS) + f"{d['CF1_mean_per_class']:10.2f}")
    lines.append("CF1 is the harmonic mean of CP and CR (the paper's); CF1(zoo) is the mean of per-class F1 "
                 "(the model-zoo toolbox's 'CF1'). Threshold: score >= 0.5.")
    if report.extra.get("pr_convention") == "authors":
        lines.append("P/R convention: the authors' (a class with no prediction counts as one predicted in CP and OP).")
    if report.convention == "voc":
        lines.append("VOC convention: difficult (0) left out of AP and P/R, -1 negative.")
    if report.extra.get("has_ignored_99"):
        lines.append("Unspecified labels (99) left out of AP and counted as negatives in P/R (the authors' rule).")
    if per_class:
        lines.append("")
        lines.append(f"{'class':24s}{'AP':>8s}")
        for i, ap in enumerate(report.ap):
            shown = "   n/a" if np.isnan(ap) else f"{100 * ap:8.2f}"
            lines.append(f"{class_name(class_names, i):24s}{shown}")
    return "\n".join(lines)


def threshold_advice(scores: np.ndarray, targets: np.ndarray, how_to_report: str, pr_convention: str = "ours") -> str:
    """Two lines: the best single threshold for every class (by CF1) against the table's 0.5, and where
    per-class thresholds come from (``how_to_report``: the command, or the report already written)."""
    t, cf1, at_half = best_global_threshold(threshold_sweep(scores, targets, pr_convention))
    first = (f"best single threshold for every class: {t:.2f} (CF1 {cf1:.2f}; {at_half:.2f} at 0.5, the table's)"
             if t != 0.5 else f"best single threshold for every class: 0.5, the table's (CF1 {cf1:.2f})")
    return (f"{first}\nper-class thresholds for demo.py --thresholds: {how_to_report}\n"
            "(thresholds chosen on the test set flatter it: choose them on held-out data)")


def report_to_dict(report: Report, class_names: Optional[Sequence[str]] = None) -> dict:
    return {
        "mAP": report.map,
        "AP": {class_name(class_names, i): (None if np.isnan(a) else 100 * float(a)) for i, a in enumerate(report.ap)},
        "undefined_classes": [class_name(class_names, i) for i in report.undefined_classes],
        "overall": report.overall,
        "top3": report.top3,
        "convention": report.convention,
    }


def save_scores(path: str, paths: List[str], scores: np.ndarray, targets: Optional[np.ndarray],
                class_names: Optional[Sequence[str]], metrics: Optional[dict]) -> None:
    """Per-image scores with their paths (and the metrics) as one JSON file."""
    obj = {
        "classes": [class_name(class_names, i) for i in range(scores.shape[1])],
        "images": [{"img_path": p, "scores": [round(float(v), 6) for v in s]} for p, s in zip(paths, scores)],
        "metrics": metrics,
    }
    if targets is not None:
        for image, t in zip(obj["images"], targets):
            image["target"] = [int(v) for v in t]
    write_json_atomic(obj, path)


def write_voc_submission(out_dir: str, paths: List[str], scores: np.ndarray, class_names: Sequence[str]) -> List[str]:
    """VOC evaluation-server files comp2_cls_test_<class>.txt with lines '<image_id> <score>'."""
    make_folder(out_dir)
    ids = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    written = []
    for c, name in enumerate(class_names):
        path = os.path.join(out_dir, f"comp2_cls_test_{name}.txt")
        with atomic_write(path) as f:
            for image_id, s in zip(ids, scores[:, c]):
                f.write(f"{image_id} {s:.6f}\n")
        written.append(path)
    return written
