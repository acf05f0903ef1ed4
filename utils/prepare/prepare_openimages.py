"""Prepare OpenImages V6 image-level labels in the sparse format (``pipeline.labels``): data/openimages/.

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
classes outside the trainable list are dropped and counted. Classes follow the trainable list's order;
images are written in ImageID order. Writes {train,validation,test}_openimages.jsonl and classes.txt
(display names), the ASL / ML-Decoder protocol: train on train, report on test.
"""
from __future__ import annotations

import csv
import os
import sys
from typing import Dict, List, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from utils.fileio import atomic_write  # noqa: E402
from utils.progress import bar  # noqa: E402
from utils.prepare.common import (CLASS_FILE, PrepareError, dataset_parser, refuse_overwrite,  # noqa: E402
                                   require_dir, require_file, run_main, write_class_names)
from pipeline.labels import write_sparse  # noqa: E402

SPLITS = {"train": "oidv6-train-annotations-human-imagelabels.csv",
          "validation": "validation-annotations-human-imagelabels.csv",
          "test": "test-annotations-human-imagelabels.csv"}
COLUMNS = ("ImageID", "Source", "LabelName", "Confidence")


def read_trainable(data_path: str) -> Tuple[List[str], List[str]]:
    """(LabelNames in the trainable list's order, their display names)."""
    trainable_path = require_file(os.path.join(data_path, "oidv6-classes-trainable.txt"))
    names_path = require_file(os.path.join(data_path, "oidv6-class-descriptions.csv"))
    with open(trainable_path, encoding="utf-8") as f:
        labels = [ln.strip() for ln in f if ln.strip()]
    if not labels:
        raise PrepareError(f"{trainable_path}: no classes")
    if len(set(labels)) != len(labels):
        raise PrepareError(f"{trainable_path}: a LabelName is listed twice")
    display = {}
    with open(names_path, encoding="utf-8", newline="") as f:
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


def read_labels(path: str, index: Dict[str, int], desc: str) -> Tuple[Dict[str, Tuple[set, set]], int]:
    """ImageID -> (positive, negative class indices) of one annotation file, and the number of labels of
    classes outside the trainable list (dropped)."""
    images: Dict[str, Tuple[set, set]] = {}
    dropped = 0
    with open(path, encoding="utf-8", newline="") as f:
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
                dropped += 1
                continue
            pos, neg = images.setdefault(image, (set(), set()))
            (pos if confidence.startswith("1") else neg).add(c)
    for image, (pos, neg) in images.items():
        both = pos & neg
        if both:  # verified both ways: the positive wins (humans saw the object)
            neg -= both
    return images, dropped


def prepare(data_path: str, out_dir: str, force: bool = False, quiet: bool = False) -> Dict[str, str]:
    require_dir(data_path)
    labels, display = read_trainable(data_path)
    index = {lab: i for i, lab in enumerate(labels)}
    outputs = {split: os.path.join(out_dir, f"{split}_openimages.jsonl") for split in SPLITS}
    refuse_overwrite(list(outputs.values()) + [os.path.join(out_dir, CLASS_FILE)], force)
    os.makedirs(out_dir, exist_ok=True)
    for split, name in SPLITS.items():
        path = require_file(os.path.join(data_path, name))
        images, dropped = read_labels(path, index, f"{split} labels")
        image_dir = os.path.join(data_path, split)
        records = ((os.path.join(image_dir, f"{image}.jpg"), sorted(pos), sorted(neg))
                   for image, (pos, neg) in sorted(images.items()))
        with atomic_write(outputs[split]) as f:
            n = write_sparse(outputs[split], records, len(labels), "unknown", CLASS_FILE, write=f.write)
        if not quiet:
            positives = sum(len(p) for p, _ in images.values())
            negatives = sum(len(q) for _, q in images.values())
            print(f"wrote {outputs[split]}: {n} images, {positives} positive and {negatives} negative labels"
                  + (f"; {dropped} labels of classes outside the trainable list dropped" if dropped else ""))
    write_class_names(out_dir, display, quiet)
    return outputs


def main(argv=None) -> None:
    a = dataset_parser(__doc__.splitlines()[0], "the folder holding the OpenImages V6 files",
                       "data/openimages").parse_args(argv)
    prepare(a.data_path, a.out_dir, a.force)


if __name__ == "__main__":
    run_main(main)
