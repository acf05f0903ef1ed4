"""Turn your own folder of images plus a label file into the project's JSON format.

    python utils/prepare/prepare_custom.py --img_dir photos/ --labels labels.csv --out_dir data/mine \
        [--test_split 0.2 --seed 0] [--classes classes.txt]

Label file: CSV lines `image,label1;label2;...` (a header `image,labels` is allowed; an image with
no label is all-negative), or JSON: {"image.jpg": ["label1", ...], ...}. A label written `?name` is
unknown for that image (neither present nor absent): -1 in train.json / all.json, for
`main.py --partial_labels`, and 99 in test.json (left out of that class's AP). Image names are relative
to --img_dir. Writes train.json and test.json (or all.json with --test_split 0) and classes.txt
beside them; then train with `main.py --train_json .../train.json --test_json .../test.json`.
"""
from __future__ import annotations

import csv
import os
import random
from typing import Dict, List, Optional

from pipeline.data.classes import load_class_names
from pipeline.data.dataset import read_json
from utils.configuration.entry import ScriptParser
from utils.prepare.common import (CLASS_FILE, PrepareError, add_force_flag, refuse_overwrite, require_dir, require_file,
                                  run_main, write_class_names, write_split)


UNKNOWN_MARK = "?"   # "?cat": unknown whether the image shows a cat
UNKNOWN_TRAIN = -1   # main.py --partial_labels leaves it out of the loss
UNKNOWN_TEST = 99    # the evaluator leaves it out of AP (as WIDER's unspecified)


def read_labels(path: str) -> Dict[str, List[str]]:
    """image name -> label names, from CSV or JSON; errors name the file and line."""
    require_file(path)
    out: Dict[str, List[str]] = {}
    if path.endswith(".json"):
        data = read_json(path)
        if not isinstance(data, dict):
            raise PrepareError(f"{path}: expected a JSON object {{image: [labels]}}")
        for image, labels in data.items():
            if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
                raise PrepareError(f"{path}: labels of {image!r} must be a list of strings")
            out[image] = labels
        return out
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError as e:
        raise PrepareError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    for line_no, row in enumerate(rows, start=1):
        if not row or not row[0].strip():
            continue
        if line_no == 1 and row[0].strip().lower() in ("image", "img", "filename", "file"):
            continue
        if len(row) > 2:
            raise PrepareError(f"{path}: line {line_no}: expected 'image,label1;label2'; got {len(row)} fields")
        labels = [x.strip() for x in (row[1] if len(row) > 1 else "").split(";") if x.strip()]
        image = row[0].strip()
        if image in out:
            raise PrepareError(f"{path}: line {line_no}: image {image!r} listed twice")
        out[image] = labels
    if not out:
        raise PrepareError(f"{path}: no labelled images")
    return out


def prepare(img_dir: str, labels_path: str, out_dir: str, test_split: float = 0.2, seed: int = 0,
            classes_path: Optional[str] = None, force: bool = False) -> Dict[str, str]:
    require_dir(img_dir)
    labels = read_labels(labels_path)
    if classes_path:
        classes = load_class_names(classes_path)
    else:
        classes = sorted({x.lstrip(UNKNOWN_MARK) for ls in labels.values() for x in ls})
    if not classes:
        raise PrepareError(f"{labels_path}: no class names found")
    index = {c: i for i, c in enumerate(classes)}
    records = []
    for image, names in labels.items():
        img_path = os.path.join(img_dir, image)
        if not os.path.isfile(img_path):
            raise PrepareError(f"{labels_path}: image {image!r} not found at {img_path}")
        target = [0] * len(classes)
        for n in names:
            name, unknown = n.lstrip(UNKNOWN_MARK), n.startswith(UNKNOWN_MARK)
            if name not in index:
                raise PrepareError(f"{labels_path}: image {image!r} has label {name!r}, not in {classes_path}")
            if target[index[name]] != 0:
                raise PrepareError(f"{labels_path}: image {image!r} names {name!r} twice")
            target[index[name]] = UNKNOWN_TRAIN if unknown else 1
        records.append({"img_path": img_path, "target": target})
    if not 0 <= test_split < 1:
        raise PrepareError(f"--test_split must be in [0, 1), got {test_split}")
    outputs = {}
    if test_split > 0:
        order = list(range(len(records)))
        random.Random(seed).shuffle(order)
        n_test = max(1, int(round(len(records) * test_split)))
        if n_test >= len(records):
            raise PrepareError(f"{labels_path}: too few images ({len(records)}) to split off a test set")
        test_ids = set(order[:n_test])
        splits = {"train": [r for i, r in enumerate(records) if i not in test_ids],
                  "test": [dict(r, target=[UNKNOWN_TEST if v == UNKNOWN_TRAIN else v for v in r["target"]])
                           for i, r in enumerate(records) if i in test_ids]}
    else:
        splits = {"all": records}
    refuse_overwrite([os.path.join(out_dir, f"{n}.json") for n in splits] + [os.path.join(out_dir, CLASS_FILE)],
                     force)
    for name, recs in splits.items():
        path = os.path.join(out_dir, f"{name}.json")
        write_split(path, recs, classes)
        outputs[name] = path
    outputs["classes"] = write_class_names(out_dir, classes)
    return outputs


def main(argv=None) -> None:
    p = ScriptParser(description=__doc__)
    p.add_argument("--img_dir", required=True)
    p.add_argument("--labels", required=True, help="CSV (image,label1;label2) or JSON {image: [labels]}")
    p.add_argument("--out_dir", required=True)
    p.add_argument("--test_split", type=float, default=0.2, help="fraction held out as test (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classes", default=None, help="fix the class order with a names file")
    add_force_flag(p)
    a = p.parse_args(argv)
    prepare(a.img_dir, a.labels, a.out_dir, a.test_split, a.seed, a.classes, a.force)


if __name__ == "__main__":
    run_main(main)
