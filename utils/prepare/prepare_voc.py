"""Prepare PASCAL VOC2007 / VOC2012 JSON files: 1 present, 0 difficult only, -1 absent (trainval made binary).

    python utils/prepare/prepare_voc.py --data_path Dataset/VOCdevkit [--year 2007|2012] [--out_dir data/voc07]

Labels per class: 1 if any non-difficult object of the class is present, 0 if all its objects are
difficult, -1 if absent. Trainval is made binary (-1 -> 0); test keeps 1 / 0 / -1.
VOC2012: trainval, plus a test list without labels when ImageSets/Main/test.txt is present.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from typing import Dict, List

from pipeline.data.classes import VOC_CLASSES
from utils.output.fileio import make_folder
from utils.output.progress import bar
from utils.prepare.common import (CLASS_FILE, PrepareError, dataset_parser, refuse_overwrite, require_dir, require_file,
                                  run_main, write_class_names, write_split)

CLASS_INDEX: Dict[str, int] = {c: i for i, c in enumerate(VOC_CLASSES)}


def read_ids(path: str) -> List[str]:
    require_file(path)
    try:
        with open(path, encoding="utf-8-sig") as f:
            ids = [line.split()[0] for line in f if line.strip()]
    except UnicodeDecodeError as e:
        raise PrepareError(f"{path}: not UTF-8 text (byte {e.start})") from None
    if not ids:
        raise PrepareError(f"{path}: empty split")
    return ids


def voc_labels(xml_path: str) -> List[int]:
    """Ternary labels of one annotation file: 1 present, 0 difficult only, -1 absent."""
    try:
        root = ET.parse(xml_path).getroot()
    except FileNotFoundError:
        raise PrepareError(f"{xml_path}: no such annotation file") from None
    except (ET.ParseError, OSError) as e:
        raise PrepareError(f"{xml_path}: unreadable annotation ({e})") from None
    labels = [-1] * len(VOC_CLASSES)
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in CLASS_INDEX:
            raise PrepareError(f"{xml_path}: unknown class name {name!r}")
        difficult = (obj.findtext("difficult") or "0").strip() == "1"
        c = CLASS_INDEX[name]
        if not difficult:
            labels[c] = 1
        elif labels[c] == -1:
            labels[c] = 0
    return labels


def build_split(voc_dir: str, ids: List[str], binary: bool, with_labels: bool = True, desc: str = "") -> List[dict]:
    records = []
    for image_id in bar(ids, desc=desc):
        img = os.path.join(voc_dir, "JPEGImages", image_id + ".jpg")
        if not os.path.isfile(img):
            raise PrepareError(f"{img}: image listed in the split is missing")
        rec = {"img_path": img}
        if with_labels:
            labels = voc_labels(os.path.join(voc_dir, "Annotations", image_id + ".xml"))
            rec["target"] = [max(v, 0) for v in labels] if binary else labels
        records.append(rec)
    return records


def prepare(data_path: str, year: str, out_dir: str, force: bool = False) -> Dict[str, str]:
    voc_dir = require_dir(os.path.join(data_path, f"VOC{year}"))
    for sub in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        require_dir(os.path.join(voc_dir, sub))
    main_dir = os.path.join(voc_dir, "ImageSets", "Main")
    ids = read_ids(os.path.join(main_dir, "train.txt")) + read_ids(os.path.join(main_dir, "val.txt"))
    ids = list(dict.fromkeys(ids))
    tag = "voc07" if year == "2007" else "voc12"
    outputs = {}
    splits = [("trainval", ids, True, True)]
    test_txt = os.path.join(main_dir, "test.txt")
    if year == "2007":
        splits.append(("test", read_ids(test_txt), False, True))
    elif os.path.isfile(test_txt):
        splits.append(("test", read_ids(test_txt), False, False))
    refuse_overwrite([os.path.join(out_dir, f"{split}_{tag}.json") for split, *_ in splits]
                     + [os.path.join(out_dir, CLASS_FILE)], force)
    make_folder(out_dir)  # (a bad --out_dir stops here, not after the annotations are read)
    for split, split_ids, binary, with_labels in splits:
        records = build_split(voc_dir, split_ids, binary, with_labels, desc=f"VOC{year} {split}")
        path = os.path.join(out_dir, f"{split}_{tag}.json")
        write_split(path, records, VOC_CLASSES)
        outputs[split] = path
    outputs["classes"] = write_class_names(out_dir, VOC_CLASSES)
    return outputs


def main(argv=None) -> None:
    p = dataset_parser(__doc__, "the VOCdevkit folder", None, "default data/voc07 or data/voc12")
    p.add_argument("--year", default="2007", choices=["2007", "2012"])
    a = p.parse_args(argv)
    prepare(a.data_path, a.year, a.out_dir or ("data/voc07" if a.year == "2007" else "data/voc12"), a.force)


if __name__ == "__main__":
    run_main(main)
