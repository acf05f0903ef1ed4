"""Prepare OpenImages V6 image-level labels in the sparse format (``pipeline.data.labels``): data/openimages/.

    python utils/prepare/prepare_openimages.py --data_path Dataset/OpenImages [--out_dir data/openimages]

Reads the files as OpenImages distributes them:

    oidv6-class-descriptions.csv                       LabelName,DisplayName
    oidv6-classes-trainable.txt                        one LabelName per line: the trained classes
    oidv6-train-annotations-human-imagelabels.csv      ImageID,Source,LabelName,Confidence
    validation-annotations-human-imagelabels.csv       (same columns)
    test-annotations-human-imagelabels.csv             (same columns)
    {train,validation,test}/<ImageID>.jpg

Confidence 1 is a positive, 0 a negative; every other trainable class of an image is unknown (the
files' header says so: training leaves them out of the loss, evaluation out of the metrics). Labels of
classes outside the trainable list are dropped and counted; so are images missing from the split's folder
(a partial download), as prepare_nuswide.py does. A split left without images, or a trainable list without
classes, is an error. Classes follow the trainable list's order;
images are written in ImageID order. Writes {train,validation,test}_openimages.jsonl and classes.txt
(display names), the ASL / ML-Decoder protocol: train on train, report on test.

OpenImages ships its annotation files sorted by ImageID: such a file is written as it is read, one image's
labels in memory at a time (the V6 train file: ~9M images). A file in another order is read whole first.
"""
from __future__ import annotations

import csv
import os
from typing import Dict, Iterator, List, Set, Tuple

from pipeline.data.labels import write_sparse
from utils.output.fileio import atomic_write, make_folder
from utils.output.progress import bar
from utils.prepare.common import (CLASS_FILE, PrepareError, dataset_parser, refuse_overwrite, require_dir, require_file,
                                  run_main, write_class_names)

SPLITS = {"train": "oidv6-train-annotations-human-imagelabels.csv",
          "validation": "validation-annotations-human-imagelabels.csv",
          "test": "test-annotations-human-imagelabels.csv"}
COLUMNS = ("ImageID", "Source", "LabelName", "Confidence")
Record = Tuple[str, List[int], List[int]]  # (image path, positive classes, negative classes)


def read_trainable(data_path: str) -> Tuple[List[str], List[str]]:
    """(LabelNames in the trainable list's order, their display names)."""
    trainable_path = require_file(os.path.join(data_path, "oidv6-classes-trainable.txt"))
    names_path = require_file(os.path.join(data_path, "oidv6-class-descriptions.csv"))
    with open(trainable_path, encoding="utf-8-sig") as f:  # (a byte-order mark accepted, as everywhere)
        labels = [ln.strip() for ln in f if ln.strip()]
    if not labels:
        raise PrepareError(f"{trainable_path}: no classes")
    if len(set(labels)) != len(labels):
        raise PrepareError(f"{trainable_path}: a LabelName is listed twice")
    display = {}
    with open(names_path, encoding="utf-8-sig", newline="") as f:
        for n, row in enumerate(csv.reader(f), start=1):
            if n == 1 and row[:2] == ["LabelName", "DisplayName"]:
                continue
            if len(row) < 2:
                raise PrepareError(f"{names_path}: line {n}: expected LabelName,DisplayName")
            display[row[0]] = row[1]
    missing = [lab for lab in labels if lab not in display]
    if missing:
        raise PrepareError(f"{names_path}: no display name for trainable class {missing[0]}")
    return labels, [display[lab] for lab in labels]


class NotSorted(Exception):
    """An annotation file whose ImageIDs are not in order (it cannot be written as it is read)."""


def label_rows(path: str, index: Dict[str, int], desc: str, tally: Dict[str, int]) -> Iterator[Tuple[str, int, bool]]:
    """(ImageID, class index, positive) of each label of a trainable class in one annotation file, checked;
    labels of other classes are dropped and counted in ``tally["dropped"]``."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(header[:4]) != COLUMNS:
            raise PrepareError(f"{path}: line 1 must be the header {','.join(COLUMNS)}")
        for n, row in enumerate(bar(reader, desc=desc), start=2):
            if len(row) < 4:
                raise PrepareError(f"{path}: line {n}: expected {len(COLUMNS)} columns, found {len(row)}")
            image, label, confidence = row[0], row[2], row[3].strip()
            if confidence not in ("0", "1", "0.0", "1.0"):
                raise PrepareError(f"{path}: line {n}: Confidence must be 0 or 1 (got {row[3]!r})")
            c = index.get(label)
            if c is None:
                tally["dropped"] += 1
                continue
            yield image, c, confidence.startswith("1")


def image_record(image_dir: str, image: str, pos: Set[int], neg: Set[int]) -> Record:
    neg = neg - pos  # verified both ways: the positive wins (humans saw the object)
    return os.path.join(image_dir, f"{image}.jpg"), sorted(pos), sorted(neg)


def present(records: Iterator[Record], tally: Dict[str, int]) -> Iterator[Record]:
    """The records whose image file is there, their labels counted; the others counted in ``tally["missing"]``
    and skipped (training would stop at them)."""
    for record in records:
        if not os.path.isfile(record[0]):
            tally["missing"] += 1
            continue
        tally["positives"] += len(record[1])
        tally["negatives"] += len(record[2])
        yield record


def streamed_records(rows: Iterator[Tuple[str, int, bool]], image_dir: str) -> Iterator[Record]:
    """The records of a file sorted by ImageID (as OpenImages ships them), one image held at a time;
    NotSorted at the first ImageID below the one before."""
    current, pos, neg = None, set(), set()
    for image, c, positive in rows:
        if image != current:
            if current is not None:
                if image < current:
                    raise NotSorted(image)
                yield image_record(image_dir, current, pos, neg)
            current, pos, neg = image, set(), set()
        (pos if positive else neg).add(c)
    if current is not None:
        yield image_record(image_dir, current, pos, neg)


def sorted_records(rows: Iterator[Tuple[str, int, bool]], image_dir: str) -> Iterator[Record]:
    """The records of a file in any order: every image's labels in memory, then in ImageID order."""
    images: Dict[str, Tuple[Set[int], Set[int]]] = {}
    for image, c, positive in rows:
        pos, neg = images.setdefault(image, (set(), set()))
        (pos if positive else neg).add(c)
    for image, (pos, neg) in sorted(images.items()):
        yield image_record(image_dir, image, pos, neg)


def write_split(path: str, out: str, image_dir: str, index: Dict[str, int], num_classes: int, desc: str,
                quiet: bool) -> Tuple[int, Dict[str, int]]:
    """One split's file and its counts; a file sorted by ImageID streams, another is read into memory first.
    A split without images stops before its file is written."""
    def write(records) -> Tuple[int, Dict[str, int]]:
        tally = {"dropped": 0, "positives": 0, "negatives": 0, "missing": 0}
        with atomic_write(out) as f:
            n = write_sparse(f, present(records(label_rows(path, index, desc, tally), image_dir), tally), num_classes,
                             "unknown", CLASS_FILE)
            if n == 0:
                raise PrepareError(f"{image_dir}: none of the {tally['missing']} images {path} labels is there"
                                   if tally["missing"] else f"{path}: no image has a label of a trainable class")
        return n, tally

    try:
        return write(streamed_records)
    except NotSorted as e:
        if not quiet:
            print(f"note: {path} is not sorted by ImageID ({e} comes after a larger one): reading it whole first")
    return write(sorted_records)


def split_summary(out: str, n: int, tally: Dict[str, int], image_dir: str) -> str:
    dropped, missing = tally["dropped"], tally["missing"]
    return (f"wrote {out}: {n} images, {tally['positives']} positive and {tally['negatives']} negative labels"
            + (f"; {dropped} labels of classes outside the trainable list dropped" if dropped else "")
            + (f"; {missing} labelled images missing from {image_dir}, skipped" if missing else ""))


def prepare(data_path: str, out_dir: str, force: bool = False, quiet: bool = False) -> Dict[str, str]:
    require_dir(data_path)
    labels, display = read_trainable(data_path)
    index = {lab: i for i, lab in enumerate(labels)}
    outputs = {split: os.path.join(out_dir, f"{split}_openimages.jsonl") for split in SPLITS}
    refuse_overwrite(list(outputs.values()) + [os.path.join(out_dir, CLASS_FILE)], force)
    make_folder(out_dir)
    for split, name in SPLITS.items():
        path = require_file(os.path.join(data_path, name))
        n, tally = write_split(path, outputs[split], os.path.join(data_path, split), index, len(labels),
                               f"{split} labels", quiet)
        if not quiet:
            print(split_summary(outputs[split], n, tally, os.path.join(data_path, split)))
    write_class_names(out_dir, display, quiet)
    return outputs


def main(argv=None) -> None:
    a = dataset_parser(__doc__.splitlines()[0], "the folder holding the OpenImages V6 files",
                       "data/openimages").parse_args(argv)
    prepare(a.data_path, a.out_dir, a.force)


if __name__ == "__main__":
    run_main(main)
