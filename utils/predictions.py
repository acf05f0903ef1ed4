"""Predictions on a folder of images, shared by demo.py and the torch-free predict_onnx.py: finding
the images, per-class thresholds, one record per image, and the JSON/CSV output. Imports no torch."""
from __future__ import annotations

import csv
import json
import os
from typing import List, Optional, Sequence, Tuple

from pipeline.errors import DataError
from pipeline.images import IMAGE_EXTENSIONS
from pipeline.jsonfile import read_json
from utils.fileio import atomic_write


def list_images(paths: Sequence[str]) -> Tuple[List[str], List[str]]:
    """Files to try (folders expanded, sorted) and the names skipped as not images."""
    files, skipped = [], []
    for p in paths:
        if os.path.isdir(p):
            for name in sorted(os.listdir(p)):
                full = os.path.join(p, name)
                if os.path.isfile(full):
                    (files if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS else skipped).append(full)
        elif os.path.isfile(p):
            files.append(p)
        else:
            skipped.append(p)
    return files, skipped


def find_images(paths: Sequence[str]) -> Tuple[List[str], List[str]]:
    """``list_images`` with one-line errors for a missing path or no image at all."""
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise DataError(f"{missing[0]}: no such file or folder")
    files, skipped = list_images(paths)
    if not files:
        raise DataError(f"no image files in {', '.join(paths)} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return files, skipped


def class_thresholds(path: str, names) -> list:
    """Per-class thresholds from a thresholds.json (val.py --report), in the order of ``names``."""
    data = read_json(path)
    table = data.get("thresholds") if isinstance(data, dict) else None
    if not isinstance(table, dict):
        raise DataError(f"{path}: not a thresholds file (no 'thresholds' object)")
    missing = [n for n in names if n not in table]
    if missing:
        raise DataError(f"{path}: no threshold for class {missing[0]!r}")
    bad = [n for n in names if not isinstance(table[n], (int, float)) or not 0 <= table[n] <= 1]
    if bad:
        raise DataError(f"{path}: threshold of {bad[0]!r} must be a number in [0, 1]")
    return [float(table[n]) for n in names]


def label_record(image: str, names: Sequence[str], scores: Sequence[float], cut: Sequence[float],
                 topk: Optional[int] = None) -> dict:
    """One image's prediction: the labels at or above their thresholds, highest first, and with ``topk``
    the k highest-scoring classes whatever the thresholds, in a list of their own."""
    order = sorted(range(len(scores)), key=lambda c: -scores[c])
    entry = lambda c: {"class": names[c], "score": round(float(scores[c]), 6)}  # noqa: E731
    rec = {"image": image, "labels": [entry(c) for c in order if scores[c] >= cut[c]]}
    if topk:
        rec["top"] = [entry(c) for c in order[:topk]]
    rec["scores"] = {n: round(float(s), 6) for n, s in zip(names, scores)}
    return rec


def _listed(entries) -> str:
    return ", ".join(f"{x['class']} ({x['score']:.3f})" for x in entries)


def prediction_line(rec: dict) -> str:
    text = f"{rec['image']}: " + (_listed(rec["labels"]) or "(nothing above threshold)")
    if "top" in rec:
        text += f"; top {len(rec['top'])}: {_listed(rec['top'])}"
    return text


def thresholds_line(path: Optional[str], cut: Sequence[float]) -> str:
    """The header line that says which thresholds the labels use."""
    if path:
        return f"labels: score >= each class's threshold from {path} ({min(cut):.3f} to {max(cut):.3f})"
    return f"labels: score >= {cut[0]:g} for every class"


def write_output(path: str, results: list, names: list) -> None:
    if path.endswith(".json"):
        with atomic_write(path) as f:
            json.dump(results, f, indent=1)
        return
    top = any("top" in r for r in results)
    with atomic_write(path) as f:
        w = csv.writer(f)
        w.writerow(["image", "labels"] + (["top"] if top else []) + names)
        for r in results:
            listed = [";".join(f"{x['class']}:{x['score']:.6g}" for x in r["top"])] if top else []
            w.writerow([r["image"], ";".join(x["class"] for x in r["labels"])] + listed + [r["scores"][n] for n in names])


def finish(results: list, files: Sequence[str], output: Optional[str], names: Sequence[str]) -> None:
    """Stop when no image could be read; else write the --output file, if one was asked for."""
    if not results:
        raise DataError(f"none of the {len(files)} image files could be read")
    if output:
        write_output(output, results, names)
        print(f"wrote {output} ({len(results)} images)")
