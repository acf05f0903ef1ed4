"""Prepare MS-COCO JSON files with pycocotools: 80 classes in category-id order.

    python utils/prepare/prepare_coco.py --data_path Dataset/COCO2014 [--year 2014|2017] [--keep_empty]

Expects annotations/instances_{train,val}<year>.json and images/{train,val}<year>/. 80 classes in
category-id order; a class is 1 if any instance of it (crowd included) is present. Images without
annotations are left out by default (82,081 train / 40,137 val for 2014); --keep_empty keeps them
as all-negative. Every listed image must be in its folder (an incomplete download stops here, naming the
first missing image and the count, not at that image hours into training).
"""
from __future__ import annotations

import contextlib
import io
import os
from typing import Dict, List, Tuple

from pycocotools.coco import COCO

from pipeline.data.dataset import read_json
from utils.output.fileio import make_folder
from utils.output.progress import bar
from utils.prepare.common import (CLASS_FILE, PrepareError, dataset_parser, refuse_overwrite, require_dir, require_file,
                                  run_main, write_class_names, write_split)


def load_coco(path: str) -> COCO:
    require_file(path)
    data = read_json(path)
    if not isinstance(data, dict):
        raise PrepareError(f"{path}: not a COCO instances file (a JSON object with 'images', 'annotations', "
                           "'categories')")
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)]
    if missing:
        raise PrepareError(f"{path}: not a COCO instances file (no '{missing[0]}' list)")
    try:
        coco = COCO()
        coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco
    except (KeyError, TypeError, ValueError, AssertionError) as e:
        raise PrepareError(f"{path}: not a COCO instances file ({type(e).__name__}: {e})") from None


def build_split(coco: COCO, image_dir: str, keep_empty: bool, desc: str) -> Tuple[List[dict], List[str]]:
    cat_ids = sorted(coco.getCatIds())
    if len(cat_ids) == 0:
        raise PrepareError(f"{desc}: no categories in the annotation file")
    index = {cid: i for i, cid in enumerate(cat_ids)}
    names = [coco.loadCats(cid)[0]["name"] for cid in cat_ids]
    records, missing = [], []
    for img_id in bar(sorted(coco.getImgIds()), desc=desc):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
        if not anns and not keep_empty:
            continue
        target = [0] * len(cat_ids)
        for a in anns:
            if not isinstance(a, dict) or a.get("category_id") not in index:
                cat = a.get("category_id") if isinstance(a, dict) else None
                raise PrepareError(f"{desc}: annotation {a.get('id') if isinstance(a, dict) else a!r} has unknown "
                                   f"category_id {cat!r}")
            target[index[a["category_id"]]] = 1
        info = coco.loadImgs(img_id)[0]
        if not isinstance(info.get("file_name"), str):
            raise PrepareError(f"{desc}: image {img_id} has no string 'file_name'")
        path = os.path.join(image_dir, info["file_name"])
        if not os.path.isfile(path):
            missing.append(path)
        records.append({"img_path": path, "target": target})
    if missing:
        raise PrepareError(f"{missing[0]}: image listed in {desc} is missing ({len(missing)} of its {len(records)} "
                           f"images are not in {image_dir}: an incomplete download?)")
    if not records:
        raise PrepareError(f"{desc}: empty split")
    return records, names


def prepare(data_path: str, year: str, out_dir: str, keep_empty: bool = False, force: bool = False) -> Dict[str, str]:
    require_dir(data_path)
    refuse_overwrite([os.path.join(out_dir, f"{s}_coco{year}.json") for s in ("train", "val")]
                     + [os.path.join(out_dir, CLASS_FILE)], force)
    make_folder(out_dir)  # (a bad --out_dir stops here, not after the annotations are read)
    outputs = {}
    for split, out_name in (("train", f"train_coco{year}.json"), ("val", f"val_coco{year}.json")):
        ann = os.path.join(data_path, "annotations", f"instances_{split}{year}.json")
        image_dir = require_dir(os.path.join(data_path, "images", f"{split}{year}"))
        records, names = build_split(load_coco(ann), image_dir, keep_empty, desc=ann)
        path = os.path.join(out_dir, out_name)
        write_split(path, records, names)
        outputs[split] = path
    outputs["classes"] = write_class_names(out_dir, names)
    return outputs


def main(argv=None) -> None:
    p = dataset_parser(__doc__, "folder holding annotations/ and images/", "data/coco")
    p.add_argument("--year", default="2014", choices=["2014", "2017"])
    p.add_argument("--keep_empty", action="store_true", help="keep images without annotations (all-negative)")
    a = p.parse_args(argv)
    prepare(a.data_path, a.year, a.out_dir, a.keep_empty, a.force)


if __name__ == "__main__":
    run_main(main)
