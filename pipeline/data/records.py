"""Reading a prepared file: the dense records' validation (the authors' JSON), re-rooting image paths,
and both formats into a LabelTable (``pipeline.data.labels``)."""
from __future__ import annotations

import math
import os
from typing import List, Optional, Tuple

from pipeline.data.labels import LabelTable, expected_count, from_dense, is_sparse_file, read_sparse
from pipeline.errors import DataError
from pipeline.jsonfile import read_json

TRAIN_LABELS = (0, 1)
PARTIAL_TRAIN_LABELS = (-1, 0, 1)  # with --partial_labels: -1 unknown
TEST_LABELS = (-1, 0, 1, 99)  # -1 absent, 0 negative (VOC: difficult), 1 present, 99 unspecified (WIDER)


def load_records(json_path: str, num_classes: Optional[int] = None, require_labels: bool = True,
                 allowed_labels: Tuple[int, ...] = TEST_LABELS, num_classes_from: Optional[str] = None) -> List[dict]:
    """Read and validate a prepared JSON file: a list of {"img_path", "target"[, "bbox"]}.
    Training files hold 0/1 targets; test files may also hold -1 (VOC absent) and 99 (WIDER unspecified).
    ``num_classes_from`` says where ``num_classes`` comes from (``pipeline.data.labels.expected_count``)."""
    if not os.path.isfile(json_path):
        raise DataError(f"{json_path}: no such JSON file (prepare the dataset first, see README)")
    records = read_json(json_path)
    if not isinstance(records, list):
        raise DataError(f"{json_path}: expected a JSON list of records, found {type(records).__name__}")
    if not records:
        raise DataError(f"{json_path}: holds no records")
    labelled = None
    expected_len = num_classes
    expected_from = expected_count(num_classes, num_classes_from) if num_classes is not None else ""
    for i, r in enumerate(records):
        if not isinstance(r, dict) or not isinstance(r.get("img_path"), str):
            raise DataError(f"{json_path}: record {i} is not an object with a string 'img_path'")
        has = "target" in r
        if labelled is None:
            labelled = has
        elif has != labelled:
            raise DataError(f"{json_path}: record {i} ({r['img_path']}) {'has' if has else 'lacks'} a target, "
                            f"unlike record 0")
        if has:
            t = r["target"]
            if not isinstance(t, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in t):
                raise DataError(f"{json_path}: record {i} ({r['img_path']}): target must be a list of integers")
            if not t:
                raise DataError(f"{json_path}: record {i} ({r['img_path']}): empty target list")
            bad = next((j for j, v in enumerate(t) if v not in allowed_labels), None)
            if bad is not None:
                unknown_allowed = t[bad] == -1 and allowed_labels == TRAIN_LABELS
                hint = " (-1 = unknown: pass --partial_labels)" if unknown_allowed else ""
                raise DataError(f"{json_path}: record {i} ({r['img_path']}): class {bad} has label {t[bad]}; "
                                f"this file may hold {', '.join(map(str, allowed_labels))}{hint}")
            if expected_len is None:
                expected_len, expected_from = len(t), f"record 0 has {len(t)}"
            elif len(t) != expected_len:
                raise DataError(f"{json_path}: record {i} ({r['img_path']}) has {len(t)} labels, {expected_from}")
        if "bbox" in r:
            b = r["bbox"]
            if not (isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                                and math.isfinite(v) for v in b)):
                raise DataError(f"{json_path}: record {i} ({r['img_path']}): bbox must be [x, y, w, h], four finite "
                                f"numbers (got {b!r})")
    if require_labels and not labelled:
        raise DataError(f"{json_path}: records have no 'target' labels; for an unlabelled test list, "
                        "write predictions with val.py --voc_submission DIR or --save_scores PATH")
    return records


def _split(path: str) -> List[str]:
    return [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]


def reroot(paths: List[str], data_root: str, json_path: str = "") -> List[str]:
    """Replace the folder part of every path that lies before the dataset's own layout.
    The number of leading components to drop is found on the first path, as the smallest
    that makes ``data_root/<rest>`` an existing file, and applied to all paths.
    """
    parts = _split(paths[0])
    for drop in range(len(parts)):
        if os.path.isfile(os.path.join(data_root, *parts[drop:])):
            break
    else:
        raise DataError(f"{json_path}: --data_root {data_root}: no tail of record 0's path "
                        f"{paths[0]} exists under it")
    return [os.path.join(data_root, *_split(p)[drop:]) for p in paths]


def relative_base(first: str, json_path: str) -> Optional[str]:
    """Relative paths are taken from the working directory (the authors' convention); when that fails for
    the first path but works from the prepared file's folder, that folder (else None: paths as they are)."""
    base = os.path.dirname(os.path.abspath(json_path))
    if os.path.isabs(first) or os.path.exists(first) or not os.path.exists(os.path.join(base, first)):
        return None
    return base


def load_table(json_path: str, num_classes: Optional[int] = None, require_labels: bool = True,
               allowed_labels: Tuple[int, ...] = TEST_LABELS, num_classes_from: Optional[str] = None) -> LabelTable:
    """A prepared file, dense JSON or sparse JSON Lines (``pipeline.data.labels``), as a LabelTable."""
    if not os.path.isfile(json_path):
        raise DataError(f"{json_path}: no such JSON file (prepare the dataset first, see README)")
    if is_sparse_file(json_path):
        return read_sparse(json_path, num_classes, num_classes_from)[0]
    records = load_records(json_path, num_classes, require_labels, allowed_labels, num_classes_from)
    return from_dense(records, num_classes)
