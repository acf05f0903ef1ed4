"""Readable tables of the metrics, JSON export, saved scores and VOC2012 submission files."""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from pipeline.data.classes import load_class_names
from pipeline.data.labels import TableRows, header_classes_file, read_sparse, write_sparse
from pipeline.errors import DataError
from utils.evaluation.analysis import best_global_threshold, class_thresholds, threshold_sweep
from utils.evaluation.metrics import UNKNOWN, Report
from utils.output.fileio import atomic_write, make_folder, write_json_atomic

KEYS = ["CP", "CR", "CF1", "OP", "OR", "OF1"]


def class_name(names: Optional[Sequence[str]], i: int) -> str:
    return names[i] if names is not None and i < len(names) else f"class_{i}"


WIDTH = 99  # the longest line the printed report holds


def names_within(prefix: str, names: Sequence[str], suffix: str, width: int = WIDTH) -> str:
    """'prefix a, b, c and 12 more suffix': as many names as fit in ``width`` characters."""
    shown: List[str] = []
    for i, name in enumerate(names):
        rest = len(names) - i - 1
        more = f" and {rest} more" if rest else ""
        if len(prefix + ", ".join(shown + [name]) + more + suffix) > width:
            break
        shown.append(name)
    more = f" and {len(names) - len(shown)} more" if len(shown) < len(names) else ""
    return prefix + ", ".join(shown) + more + suffix


def format_report(report: Report, class_names: Optional[Sequence[str]] = None, per_class: bool = True) -> str:
    """The metrics as printed: every line at most WIDTH characters."""
    lines = []
    lines.append(f"mAP: {report.map:.2f}  (non-interpolated AP, mean over {len(report.ap) - len(report.undefined_classes)}"
                 f" of {len(report.ap)} classes)")
    if report.undefined_classes:
        names = [class_name(class_names, i) for i in report.undefined_classes]
        line = f"warning: no positive image for {', '.join(names)}: AP undefined, left out of the mean"
        if len(line) > WIDTH:  # the count on the line, then as many names as a line holds
            line = (f"warning: no positive image for {len(names)} classes: AP undefined, left out of the mean\n" +
                    names_within("  ", names, ""))
        lines.append(line)
    lines.append("")
    lines.append(f"{'':8s}" + "".join(f"{k:>8s}" for k in KEYS) + f"{'CF1(zoo)':>10s}")
    for label, d in (("all", report.overall), ("top-3", report.top3)):
        lines.append(f"{label:8s}" + "".join(f"{d[k]:8.2f}" for k in KEYS) + f"{d['CF1_mean_per_class']:10.2f}")
    lines.append("CF1 is the harmonic mean of CP and CR (the paper's); CF1(zoo) is the mean of per-class F1")
    lines.append("(the model-zoo toolbox's 'CF1'). Threshold: score >= 0.5.")
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
            name = class_name(class_names, i)
            name = name if len(name) <= WIDTH - 9 else name[:WIDTH - 12] + "..."
            lines.append(f"{name:24s}{shown}")
    return "\n".join(lines)


def global_sweep(scores: np.ndarray, targets, pr_convention: str = "ours") -> Optional[Dict[str, np.ndarray]]:
    """CF1 and OF1 for one threshold used for every class (``analysis.threshold_sweep``), once for the advice
    and the report; None at OpenImages size (a table's rows: the sweep's dense masks are not made)."""
    return None if isinstance(targets, TableRows) else threshold_sweep(scores, targets, pr_convention)


def threshold_advice(sweep: Dict[str, np.ndarray], how_to_report: str, held_out: bool = False) -> str:
    """Three lines (two for ``held_out`` data): the best single threshold for every class (by CF1) against the
    table's 0.5, and where per-class thresholds come from (``how_to_report``: the command, or the file
    already written)."""
    t, cf1, at_half = best_global_threshold(sweep)
    on = "validation " if held_out else ""
    first = (f"best single threshold for every class: {t:.2f} ({on}CF1 {cf1:.2f}; {at_half:.2f} at 0.5, the "
             "table's)" if t != 0.5 else f"best single threshold for every class: 0.5, the table's ({on}CF1 {cf1:.2f})")
    second = f"per-class thresholds for demo.py --thresholds: {how_to_report}"
    if len(second) > WIDTH:  # (a long path: the command on a line of its own)
        second = f"per-class thresholds for demo.py --thresholds:\n  {how_to_report}"
    text = f"{first}\n{second}"
    return text if held_out else text + "\n(thresholds chosen on the test set flatter it: choose them on held-out data)"


def write_thresholds(path: str, names: Sequence[str], scores: np.ndarray, targets: np.ndarray, chosen_on: str) -> None:
    """thresholds.json for demo.py and predict_onnx.py --thresholds: every class's best-F1 threshold on these
    held-out scores, with the set they were chosen on."""
    thresholds_file(path, names, *class_thresholds(scores, targets), chosen_on,
                    "best-F1 thresholds chosen on held-out data")


def thresholds_file(path: str, names: Sequence[str], thresholds: np.ndarray, best_f1: np.ndarray, chosen_on: str,
                    note: str) -> None:
    write_json_atomic({"classes": list(names), "thresholds": {n: float(t) for n, t in zip(names, thresholds)},
                       "best_f1": {n: float(f) for n, f in zip(names, best_f1)}, "chosen_on": chosen_on,
                       "note": note}, path)


def report_to_dict(report: Report, class_names: Optional[Sequence[str]] = None) -> dict:
    return {
        "mAP": report.map,
        "AP": {class_name(class_names, i): (None if np.isnan(a) else 100 * float(a)) for i, a in enumerate(report.ap)},
        "undefined_classes": [class_name(class_names, i) for i in report.undefined_classes],
        "overall": report.overall,
        "top3": report.top3,
        "convention": report.convention,
    }


LARGE_SCORES = 10_000_000  # score entries beyond which --save_scores writes the binary form


def binary_scores_files(path: str) -> Dict[str, str]:
    """The files of the binary form: <stem>.npy, <stem>.labels.jsonl, <stem>.classes.txt, <stem>.metrics.json."""
    stem = os.path.splitext(path)[0]
    return {"scores": stem + ".npy", "labels": stem + ".labels.jsonl", "classes": stem + ".classes.txt",
            "metrics": stem + ".metrics.json"}


def save_scores(path: str, paths: List[str], scores: np.ndarray, targets,
                class_names: Optional[Sequence[str]], metrics: Optional[dict]) -> List[str]:
    """Per-image scores with their paths (and the metrics) as one JSON file; for a large matrix (or a
    ``.npy`` path) the binary form instead: the float32 matrix as ``.npy`` (np.load(..., mmap_mode="r")
    reads it without a copy), the paths and labels in the sparse format, the class names and the metrics
    beside it. Returns the files written."""
    if path.endswith(".npy") or scores.size > LARGE_SCORES:
        return save_scores_binary(path, paths, scores, targets, class_names, metrics)
    _save_scores_json(path, paths, scores, targets, class_names, metrics)
    return [path]


def save_scores_binary(path, paths, scores, targets, class_names, metrics) -> List[str]:
    files = binary_scores_files(path)
    names = [class_name(class_names, i) for i in range(scores.shape[1])]
    with atomic_write(files["scores"], "wb") as f:
        np.save(f, np.asarray(scores, dtype=np.float32))
    with atomic_write(files["classes"]) as f:
        f.write("".join(n + "\n" for n in names))
    rows, unknown = sparse_rows(targets, len(paths))
    with atomic_write(files["labels"]) as f:
        write_sparse(f, ((p, pos, neg) for p, (pos, neg) in zip(paths, rows)), scores.shape[1],
                     "unknown" if unknown else "negative", os.path.basename(files["classes"]))
    write_json_atomic({"classes": names, "metrics": metrics}, files["metrics"])
    return list(files.values())


def sparse_rows(targets, n: int):
    """((positives, negatives) per image, whether unlisted classes are unknown) from a target matrix or a
    table's rows (none: no labels)."""
    if targets is None:
        return [([], [])] * n, False
    if isinstance(targets, TableRows):
        return targets.records(), targets.table.unknown
    t = np.asarray(targets)
    if not np.isin(np.unique(t), (1, 0, UNKNOWN)).all():
        raise DataError("--save_scores: the binary form (.npy) holds positives, negatives and unknown labels; these "
                        "labels use VOC's or WIDER's conventions (-1, 99): save them as .json")
    rows = ((np.flatnonzero(row == 1).tolist(), np.flatnonzero(row == 0).tolist()) for row in t)
    return rows, bool((t == UNKNOWN).any())


def load_score_matrix(path: str) -> np.ndarray:
    """A .npy score matrix, memory-mapped, or one line saying why it is not one (truncated, not .npy,
    pickled objects, not images x classes of numbers)."""
    try:
        scores = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, EOFError, OSError) as e:
        reason = "pickled Python objects, which are not read" if "pickle" in str(e) or "object" in str(e) else \
            " ".join(str(e).split())[:120] or type(e).__name__
        raise DataError(f"{path}: not a readable .npy score matrix ({reason})") from None
    if not isinstance(scores, np.ndarray) or scores.ndim != 2 or scores.dtype.kind not in "fiu":
        what = f"a {'x'.join(map(str, scores.shape))} array of {scores.dtype}" if isinstance(scores, np.ndarray) \
            else "not an array"
        raise DataError(f"{path}: holds {what}; a score matrix is images x classes of numbers")
    return scores


def load_scores_binary(path: str):
    """(scores memory-mapped, TableRows, paths, class names) of a binary --save_scores file."""
    files = binary_scores_files(path)
    for key in ("scores", "labels"):
        if not os.path.isfile(files[key]):
            raise DataError(f"{files[key]}: missing; a binary --save_scores file comes with {os.path.basename(files['labels'])}")
    scores = load_score_matrix(files["scores"])
    table, header = read_sparse(files["labels"], scores.shape[1], f"{files['scores']} has {scores.shape[1]} columns")
    classes_file = header_classes_file(files["labels"], header)
    names = load_class_names(classes_file) if classes_file and os.path.isfile(classes_file) else \
        [f"class_{i}" for i in range(table.num_classes)]
    if scores.shape[0] != len(table):
        raise DataError(f"{files['scores']}: {scores.shape[0]} rows, {files['labels']} {len(table)} records")
    return scores, TableRows(table), table.paths(), names


def float32_values(row) -> List[float]:
    """A row of scores as JSON numbers that read back as the same float32 values (9 significant digits):
    rounding to fewer merges the saturated scores of a confident model (0.9999996 and 1.0), so --from_scores
    would score other ties than the file's own metrics were computed on."""
    return [float(f"{v:.9g}") for v in np.asarray(row, dtype=np.float32).tolist()]


def _save_scores_json(path: str, paths: List[str], scores: np.ndarray, targets,
                      class_names: Optional[Sequence[str]], metrics: Optional[dict]) -> None:
    """Per-image scores with their paths (and the metrics) as one JSON file."""
    obj = {
        "classes": [class_name(class_names, i) for i in range(scores.shape[1])],
        "images": [{"img_path": p, "scores": float32_values(s)} for p, s in zip(paths, scores)],
        "metrics": metrics,
    }
    if targets is not None:
        if isinstance(targets, TableRows):
            targets = targets.dense()
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
