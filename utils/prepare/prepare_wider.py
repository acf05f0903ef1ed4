"""Prepare WIDER-Attribute JSON files: one record per annotated person (1 -> 1; -1 -> 0; unspecified 0 -> 0 in trainval, 99 in test).

    python utils/prepare/prepare_wider.py --data_path Dataset/WIDER_ATTRIBUTE [--out_dir data/wider]

Expects Annotations/ (or Anno/) wider_attribute_{trainval,test}.json and Image/<file_name>. Each record carries the
person's "bbox": [x, y, w, h]. Attribute 1 -> 1, -1 -> 0; unspecified (0) -> 0 in trainval and
99 in test (left out of mAP, counted as negative in P/R).
"""
from __future__ import annotations

import math
import os
from typing import Dict, List

from pipeline.data.classes import WIDER_ATTRIBUTES
from pipeline.data.dataset import read_json
from utils.output.fileio import make_folder
from utils.output.progress import bar
from utils.prepare.common import (CLASS_FILE, PrepareError, dataset_parser, refuse_overwrite, require_dir, require_file,
                                  run_main, write_class_names, write_split)

UNSPECIFIED_TEST = 99


def convert(values: List[int], test: bool, where: str) -> List[int]:
    out = []
    for v in values:
        if v == 1:
            out.append(1)
        elif v == -1:
            out.append(0)
        elif v == 0:
            out.append(UNSPECIFIED_TEST if test else 0)
        else:
            raise PrepareError(f"{where}: attribute value {v!r} is not 1, -1 or 0")
    return out


def build_split(ann_path: str, image_root: str, test: bool) -> List[dict]:
    require_file(ann_path)
    data = read_json(ann_path)
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise PrepareError(f"{ann_path}: no 'images' list (not a WIDER-Attribute annotation file)")
    records = []
    for i, im in enumerate(bar(images, desc=os.path.basename(ann_path))):
        file_name = im.get("file_name") if isinstance(im, dict) else None
        targets = im.get("targets") if isinstance(im, dict) else None
        if not isinstance(file_name, str) or not isinstance(targets, list):
            raise PrepareError(f"{ann_path}: image entry {i} needs a string 'file_name' and a 'targets' list")
        for j, person in enumerate(targets):
            where = f"{ann_path}: {file_name} person {j}"
            if not isinstance(person, dict):
                raise PrepareError(f"{where}: expected an object with 'attribute' and 'bbox'")
            attrs, bbox = person.get("attribute"), person.get("bbox")
            if not isinstance(attrs, list) or len(attrs) != len(WIDER_ATTRIBUTES):
                raise PrepareError(f"{where}: expected {len(WIDER_ATTRIBUTES)} attributes")
            if not isinstance(bbox, list) or len(bbox) != 4 or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox):
                raise PrepareError(f"{where}: bbox must be [x, y, w, h], four finite numbers (got {bbox!r})")
            # every person, as the authors' script: zero-size and outside boxes too (the loader makes them black)
            records.append({"img_path": os.path.join(image_root, file_name),
                            "target": convert(attrs, test, where), "bbox": [float(v) for v in bbox]})
    if not records:
        raise PrepareError(f"{ann_path}: empty split")
    return records


ANNOTATION_FOLDERS = ("Annotations", "Anno")  # the authors' README layout first, then the release's


def annotation_file(data_path: str, split: str) -> str:
    """wider_attribute_<split>.json under Annotations/ (the authors' layout) or Anno/."""
    name = f"wider_attribute_{split}.json"
    tried = [os.path.join(data_path, folder, name) for folder in ANNOTATION_FOLDERS]
    for path in tried:
        if os.path.isfile(path):
            return path
    raise PrepareError(f"{name}: not found; tried {' and '.join(tried)}")


def prepare(data_path: str, out_dir: str, force: bool = False) -> Dict[str, str]:
    require_dir(data_path)
    refuse_overwrite([os.path.join(out_dir, f"{s}_wider.json") for s in ("trainval", "test")]
                     + [os.path.join(out_dir, CLASS_FILE)], force)
    image_root = require_dir(os.path.join(data_path, "Image"))
    make_folder(out_dir)  # (a bad --out_dir stops here, not after the annotations are read)
    outputs = {}
    for split, test in (("trainval", False), ("test", True)):
        records = build_split(annotation_file(data_path, split), image_root, test)
        path = os.path.join(out_dir, f"{split}_wider.json")
        write_split(path, records, WIDER_ATTRIBUTES)
        outputs[split] = path
    outputs["classes"] = write_class_names(out_dir, WIDER_ATTRIBUTES)
    return outputs


def main(argv=None) -> None:
    a = dataset_parser(__doc__, "the WIDER_ATTRIBUTE folder (Annotations/ or Anno/, Image/)", "data/wider").parse_args(
        argv)
    prepare(a.data_path, a.out_dir, a.force)


if __name__ == "__main__":
    run_main(main)
