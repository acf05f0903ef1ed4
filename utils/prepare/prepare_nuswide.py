"""Prepare NUS-WIDE's 81 concepts in the sparse format (``pipeline.data.labels``): data/nuswide/.

    python utils/prepare/prepare_nuswide.py --data_path Dataset/NUS-WIDE [--image_dir Dataset/NUS-WIDE/Flickr]

Reads the files as NUS-WIDE distributes them:

    Concepts81.txt                                           the 81 concept names, one per line
    ImageList/TrainImagelist.txt, ImageList/TestImagelist.txt    one image a line ("actor\\0001_2124494179.jpg")
    Groundtruth/TrainTestLabels/Labels_<concept>_Train.txt   one 0/1 a line, in the train list's order
    Groundtruth/TrainTestLabels/Labels_<concept>_Test.txt    (the test list's order)
    Flickr/<folder>/<file>.jpg                               the images (--image_dir)

Every concept is labelled for every image, so the files list positives and say that unlisted concepts
are negative. Images missing from the image folder are skipped and counted (many Flickr images are no
longer distributed). An empty concept list or image list, or a split none of whose images is there, is an
error. Writes train_nuswide.jsonl, test_nuswide.jsonl and classes.txt.
"""
from __future__ import annotations

import os
from typing import Dict, List, Tuple

from pipeline.data.labels import write_sparse
from utils.output.fileio import atomic_write, make_folder
from utils.output.progress import bar
from utils.prepare.common import (CLASS_FILE, PrepareError, dataset_parser, refuse_overwrite, require_dir, require_file,
                                  run_main, write_class_names)

SPLITS = {"train": ("TrainImagelist.txt", "Train"), "test": ("TestImagelist.txt", "Test")}


def read_lines(path: str) -> List[str]:
    with open(require_file(path), encoding="utf-8-sig", errors="replace") as f:  # (a byte-order mark accepted)
        return [ln.strip() for ln in f if ln.strip()]


def read_column(path: str, expected: int) -> List[int]:
    """A concept's 0/1 labels, one a line, as many as the image list has."""
    values = read_lines(path)
    if len(values) != expected:
        raise PrepareError(f"{path}: {len(values)} labels for the {expected} images of its image list")
    out = []
    for n, v in enumerate(values, start=1):
        if v not in ("0", "1"):
            raise PrepareError(f"{path}: line {n}: a label is 0 or 1 (got {v!r})")
        out.append(int(v))
    return out


def build_split(data_path: str, image_dir: str, concepts: List[str], split: str
                ) -> Tuple[List[Tuple[str, List[int], List[int]]], int]:
    """(records (image path, positives, []), images missing from the image folder)."""
    list_name, suffix = SPLITS[split]
    list_path = os.path.join(data_path, "ImageList", list_name)
    images = read_lines(list_path)
    if not images:
        raise PrepareError(f"{list_path}: no images listed")
    positives: List[List[int]] = [[] for _ in images]
    label_dir = os.path.join(data_path, "Groundtruth", "TrainTestLabels")
    for c, concept in enumerate(bar(concepts, desc=f"{split} labels")):
        column = read_column(os.path.join(label_dir, f"Labels_{concept}_{suffix}.txt"), len(images))
        for i, v in enumerate(column):
            if v:
                positives[i].append(c)
    records, missing = [], 0
    for name, pos in zip(images, positives):
        path = os.path.join(image_dir, *name.replace("\\", "/").split("/"))
        if not os.path.isfile(path):
            missing += 1
            continue
        records.append((path, pos, []))
    return records, missing


def prepare(data_path: str, out_dir: str, image_dir: str = None, force: bool = False, quiet: bool = False
            ) -> Dict[str, str]:
    require_dir(data_path)
    image_dir = require_dir(image_dir or os.path.join(data_path, "Flickr"))
    concepts_path = os.path.join(data_path, "Concepts81.txt")
    concepts = read_lines(concepts_path)
    if not concepts:
        raise PrepareError(f"{concepts_path}: no concepts")
    if len(set(concepts)) != len(concepts):
        raise PrepareError(f"{concepts_path}: a concept is listed twice")
    outputs = {split: os.path.join(out_dir, f"{split}_nuswide.jsonl") for split in SPLITS}
    refuse_overwrite(list(outputs.values()) + [os.path.join(out_dir, CLASS_FILE)], force)
    make_folder(out_dir)
    for split in SPLITS:
        records, missing = build_split(data_path, image_dir, concepts, split)
        if not records:
            raise PrepareError(f"{image_dir}: none of the {split} list's images is there")
        with atomic_write(outputs[split]) as f:
            n = write_sparse(f, records, len(concepts), "negative", CLASS_FILE)
        if not quiet:
            print(f"wrote {outputs[split]}: {n} images" + (f" ({missing} listed images missing from {image_dir}, "
                                                           "skipped)" if missing else ""))
    write_class_names(out_dir, concepts, quiet)
    return outputs


def main(argv=None) -> None:
    p = dataset_parser(__doc__.splitlines()[0], "the folder holding Concepts81.txt, ImageList/, Groundtruth/",
                       "data/nuswide")
    p.add_argument("--image_dir", default=None, help="the images (default: DATA_PATH/Flickr)")
    a = p.parse_args(argv)
    prepare(a.data_path, a.out_dir, a.image_dir, a.force)


if __name__ == "__main__":
    run_main(main)
