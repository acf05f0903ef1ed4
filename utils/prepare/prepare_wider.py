"""Prepare WIDER-Attribute JSON files: one record per annotated person (1 -> 1; -1 -> 0; unspecified 0 -> 0 in trainval, 99 in test).

    python utils/prepare/prepare_wider.py --data_path Dataset/WIDER_ATTRIBUTE [--out_dir data/wider]

Expects Annotations/ (or Anno/) wider_attribute_{trainval,test}.json and Image/<file_name>. Each record carries the
person's "bbox": [x, y, w, h]. Attribute 1 -> 1, -1 -> 0; unspecified (0) -> 0 in trainval and
99 in test (left out of mAP, counted as negative in P/R).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tqdm import tqdm  # noqa: E402

from pipeline.classes import WIDER_ATTRIBUTES  # noqa: E402
from pipeline.dataset import read_json  # noqa: E402
from utils.prepare.common import (PrepareError, add_force_flag, refuse_overwrite, require_dir,  # noqa: E402
                                   require_file, run_main, write_split)

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
    try:
        images = data["images"]
    except (KeyError, TypeError):
        raise PrepareError(f"{ann_path}: no 'images' list (not a WIDER-Attribute annotation file)") from None
    records, skipped = [], 0
    for i, im in enumerate(tqdm(images, desc=os.path.basename(ann_path), mininterval=1.0)):
        try:
            file_name, targets = im["file_name"], im["targets"]
        except (KeyError, TypeError):
            raise PrepareError(f"{ann_path}: image entry {i} lacks file_name/targets") from None
        for j, person in enumerate(targets):
            where = f"{ann_path}: {file_name} person {j}"
            attrs, bbox = person.get("attribute"), person.get("bbox")
            if not isinstance(attrs, list) or len(attrs) != len(WIDER_ATTRIBUTES):
                raise PrepareError(f"{where}: expected {len(WIDER_ATTRIBUTES)} attributes")
            if not isinstance(bbox, list) or len(bbox) != 4:
                raise PrepareError(f"{where}: bbox must be [x, y, w, h]")
            if bbox[2] <= 0 or bbox[3] <= 0:
                skipped += 1
                continue
            records.append({"img_path": os.path.join(image_root, file_name),
                            "target": convert(attrs, test, where), "bbox": [float(v) for v in bbox]})
    if not records:
        raise PrepareError(f"{ann_path}: empty split")
    if skipped:
        print(f"{ann_path}: left out {skipped} persons with an empty bbox")
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
    refuse_overwrite([os.path.join(out_dir, f"{s}_wider.json") for s in ("trainval", "test")], force)
    image_root = require_dir(os.path.join(data_path, "Image"))
    outputs = {}
    for split, test in (("trainval", False), ("test", True)):
        records = build_split(annotation_file(data_path, split), image_root, test)
        path = os.path.join(out_dir, f"{split}_wider.json")
        write_split(path, records, WIDER_ATTRIBUTES)
        outputs[split] = path
    return outputs


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_path", required=True, help="the WIDER_ATTRIBUTE folder (Annotations/ or Anno/, Image/)")
    p.add_argument("--out_dir", default="data/wider")
    add_force_flag(p)
    a = p.parse_args(argv)
    prepare(a.data_path, a.out_dir, a.force)


if __name__ == "__main__":
    run_main(main)
