"""Image paths and labels of a prepared file, held as compressed arrays: the one in-memory form of both
prepared formats.

- The dense JSON list of the authors' format, ``[{"img_path", "target": [C ints][, "bbox"]}, ...]``.
- The sparse JSON Lines format, for OpenImages- and NUS-WIDE-size data: a header line, then one record a
  line, listing only the classes whose label is known::

      {"format": "csra-sparse-labels", "version": 1, "classes": "classes.txt", "num_classes": 9605,
       "unlisted": "unknown"}
      {"img_path": "train/000002b66c9c498e.jpg", "positives": [3, 250], "negatives": [17]}

  ``unlisted`` says what a class missing from a record is: ``negative`` (fully labelled data, e.g.
  NUS-WIDE) or ``unknown`` (OpenImages: left out of the loss, which implies --partial_labels, and of the
  metrics).

A ``LabelTable`` stores each record's listed labels in CSR form (``offsets``, ``classes``, ``values``) and
the paths in one byte string, so its memory grows with the known labels, not with images x classes,
and no per-record Python object is kept (DataLoader workers share the arrays). Dense files are stored
the same way: the entries that differ from 0.
"""
from __future__ import annotations

import array
import json
import math
import os
from dataclasses import dataclass, replace
from typing import Iterable, List, Optional, Sequence, TextIO, Tuple, Union

import numpy as np

from pipeline.errors import DataError

FORMAT = "csra-sparse-labels"
VERSION = 1
UNLISTED = ("negative", "unknown")
UNKNOWN = -1  # a training target's "unknown" (the --partial_labels convention; pipeline.training.losses reads it here)
EVAL_UNKNOWN = -99  # the evaluator's "unknown": left out of AP and of the P/R counts (utils.evaluation.metrics)


BOM = b"\xef\xbb\xbf"  # UTF-8's byte-order mark, which spreadsheet tools on Windows put first


def is_sparse_file(path: str) -> bool:
    """JSON Lines with our header (by the first character: a dense file is a JSON list)."""
    with open(path, "rb") as f:
        head = f.read(256)
    return head.removeprefix(BOM).lstrip()[:1] == b"{"


@dataclass(frozen=True)
class LabelTable:
    path_blob: bytes               # every img_path, UTF-8, concatenated
    path_offsets: np.ndarray       # (N + 1,) int64: path i is path_blob[o[i]:o[i + 1]]
    offsets: np.ndarray            # (N + 1,) int64: record i's labels are classes/values[o[i]:o[i + 1]]
    classes: np.ndarray            # (nnz,) int32
    values: np.ndarray             # (nnz,) int8: 1 positive, 0 negative (or a dense file's own values)
    num_classes: Optional[int]     # None: an unlabelled list
    unknown: bool = False          # unlisted classes are unknown (sparse "unknown"); else their value is 0
    bboxes: Optional[np.ndarray] = None  # (N, 4) float64, NaN rows where a record has no box
    minus_one_unknown: bool = False  # a listed -1 is unknown (a dense --partial_labels file), not VOC's "absent"

    def __len__(self) -> int:
        return len(self.path_offsets) - 1

    @property
    def has_labels(self) -> bool:
        return self.num_classes is not None

    @property
    def default(self) -> int:
        """The training target of an unlisted class."""
        return UNKNOWN if self.unknown else 0

    def path(self, i: int) -> str:
        return self.path_blob[self.path_offsets[i]:self.path_offsets[i + 1]].decode("utf-8")

    def paths(self) -> List[str]:
        return [self.path(i) for i in range(len(self))]

    def bbox(self, i: int) -> Optional[List[float]]:
        if self.bboxes is None or np.isnan(self.bboxes[i, 0]):
            return None
        return [float(v) for v in self.bboxes[i]]

    def target(self, i: int) -> np.ndarray:
        """Record i's training target (C,) int8: listed values, unlisted ones the default."""
        row = np.full(self.num_classes, self.default, dtype=np.int8)
        a, b = self.offsets[i], self.offsets[i + 1]
        row[self.classes[a:b]] = self.values[a:b]
        return row

    def entries(self, rows: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(position among ``rows``, class, value) of every listed label of those records (all when None)."""
        rows = np.arange(len(self)) if rows is None else np.asarray(rows)
        counts = self.offsets[rows + 1] - self.offsets[rows]
        within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        at = np.repeat(self.offsets[rows], counts) + within
        return np.repeat(np.arange(len(rows)), counts), self.classes[at], self.values[at]

    def dense(self, rows: Optional[np.ndarray] = None) -> np.ndarray:
        """The (N, C) int8 matrix of training targets (of ``rows`` only, when given)."""
        n = len(self) if rows is None else len(rows)
        out = np.full((n, self.num_classes), self.default, dtype=np.int8)
        r, c, v = self.entries(rows)
        out[r, c] = v
        return out

    def eval_targets(self, rows: Optional[np.ndarray] = None) -> np.ndarray:
        """Targets in the evaluator's convention (utils.evaluation.metrics): a dense file's values as they
        are; with unknown labels, 1 positive, 0 negative and EVAL_UNKNOWN (left out of AP and P/R)."""
        t = self.dense(rows)
        if self.unknown or self.minus_one_unknown:
            t[t == UNKNOWN] = EVAL_UNKNOWN
        return t

    def take(self, rows: Sequence[int]) -> "LabelTable":
        """The table of some records (``rows``, in that order), without a Python object per record."""
        rows = np.asarray(rows, dtype=np.int64)
        counts = self.offsets[rows + 1] - self.offsets[rows]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        _, classes, values = self.entries(rows)
        starts = self.path_offsets[rows]
        lengths = self.path_offsets[rows + 1] - starts
        path_offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=path_offsets[1:])
        at = np.repeat(starts - path_offsets[:-1], lengths) + np.arange(path_offsets[-1])
        blob = np.frombuffer(self.path_blob, dtype=np.uint8)[at].tobytes()
        boxes = None if self.bboxes is None else self.bboxes[rows]
        return replace(self, path_blob=blob, path_offsets=path_offsets, offsets=offsets, classes=classes.copy(),
                       values=values.copy(), bboxes=boxes)

    def with_paths(self, paths: Sequence[str]) -> "LabelTable":
        blob, offsets = pack_paths(paths)
        return replace(self, path_blob=blob, path_offsets=offsets)


def pack_paths(paths: Iterable[str]) -> Tuple[bytes, np.ndarray]:
    encoded = [p.encode("utf-8") for p in paths]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(p) for p in encoded], out=offsets[1:])
    return b"".join(encoded), offsets


def from_dense(records: List[dict], num_classes: Optional[int]) -> LabelTable:
    """A table from validated dense records (``pipeline.data.dataset.load_records``)."""
    blob, path_offsets = pack_paths(r["img_path"] for r in records)
    boxes = None
    if any("bbox" in r for r in records):
        boxes = np.full((len(records), 4), np.nan)
        for i, r in enumerate(records):
            if "bbox" in r:
                boxes[i] = r["bbox"]
    if "target" not in records[0]:
        empty = np.zeros(0, dtype=np.int32)
        return LabelTable(blob, path_offsets, np.zeros(len(records) + 1, dtype=np.int64), empty,
                          empty.astype(np.int8), None, bboxes=boxes)
    t = np.array([r["target"] for r in records], dtype=np.int8)
    rows, cols = np.nonzero(t)
    offsets = np.zeros(len(records) + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=len(records)), out=offsets[1:])
    return LabelTable(blob, path_offsets, offsets, cols.astype(np.int32), t[rows, cols], num_classes or t.shape[1],
                      bboxes=boxes)


def read_header(path: str, line: bytes) -> dict:
    try:
        header = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: line 1 is not JSON ({e.msg}); a sparse label file starts with its header") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: line 1 is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise DataError(f"{path}: line 1 is not a sparse label header ({{\"format\": \"{FORMAT}\", ...}})")
    if type(header.get("version")) is not int or header["version"] != VERSION:
        raise DataError(f"{path}: version {json.dumps(header.get('version'))} of the sparse format; this code reads "
                        f"{VERSION}")
    c = header.get("num_classes")
    if not isinstance(c, int) or isinstance(c, bool) or c <= 0:
        raise DataError(f"{path}: line 1: num_classes must be a positive integer (got {c!r})")
    if header.get("unlisted") not in UNLISTED:
        raise DataError(f"{path}: line 1: unlisted must be {' or '.join(UNLISTED)} (got {header.get('unlisted')!r})")
    return header


def expected_count(num_classes: int, source: Optional[str]) -> str:
    """Where an expected class count comes from, for messages: ``source`` ('/d/classes.txt lists 6 class
    names'), or the flag that gives it."""
    return source or f"--num_cls is {num_classes}"


def _has_booleans(lists) -> bool:
    """A JSON true/false among the class indices (Python would take them for 1 and 0)."""
    return any(type(v) is bool for lst in lists for v in lst)


def _bbox(value, path: str, n: int) -> list:
    if not (isinstance(value, list) and len(value) == 4 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
        raise DataError(f"{path}: line {n}: bbox must be [x, y, w, h], four finite numbers (got {value!r})")
    return value


def read_sparse(path: str, num_classes: Optional[int] = None,
                num_classes_from: Optional[str] = None) -> Tuple[LabelTable, dict]:
    """(table, header) of a sparse JSON Lines file; a bad line stops with the file and line number. A
    ``num_classes`` the header must agree with comes with where it comes from (``expected_count``)."""
    with open(path, "rb") as f:
        header = read_header(path, f.readline().removeprefix(BOM))
        c = header["num_classes"]
        if num_classes is not None and num_classes != c:
            raise DataError(f"{path}: its header says {c} classes, {expected_count(num_classes, num_classes_from)}")
        classes, values, counts, lines, paths, boxes = _read_records(f, path)
    if not paths:
        raise DataError(f"{path}: holds no records")
    offsets = np.zeros(len(paths) + 1, dtype=np.int64)
    np.cumsum(np.frombuffer(counts, dtype=np.int64), out=offsets[1:])
    cls = np.frombuffer(classes, dtype=np.int32).copy()
    _check_classes(path, cls, offsets, c, np.frombuffer(lines, dtype=np.int64))
    bboxes = None
    if boxes:
        bboxes = np.full((len(paths), 4), np.nan)
        for i, b in boxes.items():
            bboxes[i] = b
    blob, path_offsets = pack_paths(paths)
    table = LabelTable(blob, path_offsets, offsets, cls, np.frombuffer(values, dtype=np.int8).copy(), c,
                       unknown=header["unlisted"] == "unknown", bboxes=bboxes)
    return table, header


def _read_records(f, path: str):
    """The records after the header: (classes, values, label counts, line numbers, paths, boxes). Lines are
    read in batches of about 1 MB; a JSON true/false (which Python would take for class 1 or 0) is looked
    for in a batch's bytes first, so the per-record type check runs only where one may be."""
    classes, values, counts, lines, paths, boxes = (array.array("i"), array.array("b"), array.array("q"),
                                                    array.array("q"), [], {})
    loads = json.loads
    n = 1
    for batch in iter(lambda: f.readlines(1 << 20), []):
        joined = b"".join(batch)
        may_hold_booleans = b"true" in joined or b"false" in joined
        for line in batch:
            n += 1
            if not line.strip():
                continue
            try:
                r = loads(line)
                p, q = r.get("positives", []), r.get("negatives", [])
                img = r["img_path"]
                if not isinstance(img, str) or not isinstance(p, list) or not isinstance(q, list) or \
                        (may_hold_booleans and _has_booleans((p, q))):
                    raise TypeError
                classes.extend(p)
                classes.extend(q)
                if "bbox" in r:
                    boxes[len(paths)] = _bbox(r["bbox"], path, n)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {n} is not JSON ({e.msg})") from None
            except UnicodeDecodeError as e:
                raise DataError(f"{path}: line {n} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
            except (TypeError, KeyError, AttributeError, OverflowError):
                raise DataError(f"{path}: line {n}: a record is {{\"img_path\": str, \"positives\": [class indices], "
                                "\"negatives\": [class indices]}; class indices are integers") from None
            values.frombytes(b"\x01" * len(p) + b"\x00" * len(q))
            counts.append(len(p) + len(q))
            lines.append(n)
            paths.append(img)
    return classes, values, counts, lines, paths, boxes


def _check_classes(path: str, cls: np.ndarray, offsets: np.ndarray, c: int, lines: np.ndarray) -> None:
    def line_of(entry: int) -> int:  # the file line of the record holding label ``entry``
        return int(lines[np.searchsorted(offsets, entry, side="right") - 1])
    bad = np.flatnonzero((cls < 0) | (cls >= c))
    if bad.size:
        raise DataError(f"{path}: line {line_of(bad[0])}: class index {cls[bad[0]]} is outside 0..{c - 1}")
    rows = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    key = rows.astype(np.int64) * c + cls
    order = np.argsort(key, kind="stable")
    dup = np.flatnonzero(key[order][1:] == key[order][:-1])
    if dup.size:
        entry = order[dup[0] + 1]
        raise DataError(f"{path}: line {line_of(entry)}: class {cls[entry]} is listed twice "
                        "(positives and negatives hold each class at most once)")


def write_sparse(out: Union[str, os.PathLike, TextIO], records: Iterable[Tuple[str, Sequence[int], Sequence[int]]],
                 num_classes: int, unlisted: str, classes_file: str = "classes.txt") -> int:
    """Write (img_path, positives, negatives) records in the sparse format to ``out``, a path or an open text
    file (the preparation scripts pass ``utils.output.fileio.atomic_write``'s); returns the number of records."""
    if isinstance(out, (str, os.PathLike)):
        with open(out, "w", encoding="utf-8") as f:
            return write_sparse(f, records, num_classes, unlisted, classes_file)
    out.write(json.dumps({"format": FORMAT, "version": VERSION, "classes": classes_file, "num_classes": num_classes,
                          "unlisted": unlisted}) + "\n")
    n = 0
    for img, pos, neg in records:
        out.write(json.dumps({"img_path": img, "positives": list(pos), "negatives": list(neg)},
                             separators=(",", ":")) + "\n")
        n += 1
    return n


def header_classes_file(path: str, header: dict) -> Optional[str]:
    """The class-names file a sparse header names, beside the file."""
    name = header.get("classes")
    return os.path.join(os.path.dirname(os.path.abspath(path)), name) if isinstance(name, str) else None


DENSE_LIMIT = 50_000_000  # images x classes above which evaluation reads the table, not a dense matrix


def fits_dense(images: int, classes: int) -> bool:
    """Whether a dense (images, classes) target matrix is within DENSE_LIMIT (the one size rule)."""
    return images * classes <= DENSE_LIMIT


class TableRows:
    """Some records of a table (``rows``), standing in for their (N, C) target matrix where that matrix
    would be too large (utils.evaluation.evaluate reads the labels from the table)."""

    def __init__(self, table: LabelTable, rows: Optional[np.ndarray] = None):
        self.table = table
        self.rows = np.arange(len(table)) if rows is None else np.asarray(rows)

    @property
    def shape(self) -> Tuple[int, int]:
        return len(self.rows), self.table.num_classes

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index) -> "TableRows":
        return TableRows(self.table, self.rows[index])

    def dense(self) -> np.ndarray:
        return self.table.eval_targets(self.rows)

    def records(self) -> Iterable[Tuple[List[int], List[int]]]:
        """(positives, negatives) of each row, for the sparse writer."""
        t = self.table
        for i in self.rows:
            a, b = t.offsets[i], t.offsets[i + 1]
            cls, val = t.classes[a:b], t.values[a:b]
            yield cls[val == 1].tolist(), cls[val == 0].tolist()
