"""The multi-label dataset over a prepared file (dense JSON or sparse JSON Lines), and the collation that
drops unreadable images. The file's records (``pipeline.data.records``), the transforms (``pipeline.data.transforms``)
and the dataset table (``pipeline.data.dataset_table``) live beside it and are importable from here too.

A dense file is a JSON list of records ``{"img_path": str, "target": [int] * C}`` (WIDER records also carry
``"bbox": [x, y, w, h]``, the person to crop). Workers return uint8 image tensors; conversion to float and
normalisation happen on the device (``pipeline.models.runtime.to_model_input``).
"""
from __future__ import annotations

import copy
import os
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Dict, Optional

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from pipeline.data.dataset_table import CUSTOM, DATASETS  # noqa: F401  (re-exported)
from pipeline.data.labels import LabelTable, TableRows, fits_dense
from pipeline.data.records import (PARTIAL_TRAIN_LABELS, TEST_LABELS, TRAIN_LABELS, load_records,  # noqa: F401
                                   load_table, relative_base, reroot)
from pipeline.data.transforms import ImageTransform, cut_out, make_randaugment  # noqa: F401  (re-exported)
from pipeline.errors import DataError  # noqa: F401  (re-exported)
from pipeline.images import crop_box, read_rgb
from pipeline.jsonfile import read_json  # noqa: F401  (re-exported: callers import it from here)


class Records(Sequence):
    """The records of a LabelTable as the authors' dicts, made when asked for (nothing is kept per record)."""

    def __init__(self, table: LabelTable):
        self.table = table

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> dict:
        rec = {"img_path": self.table.path(i)}
        if self.table.has_labels:
            rec["target"] = self.table.target(i).tolist()
        box = self.table.bbox(i)
        if box is not None:
            rec["bbox"] = box
        return rec


@dataclass(frozen=True)
class ImageReading:
    """How a dataset reads its images: ``skip_bad`` leaves unreadable ones out of the batch (a count is
    reported) rather than stopping; ``cache`` keeps each decoded image in the loading process; ``fast_decode``
    decodes JPEGs at a reduced scale (None: for training only)."""
    skip_bad: bool = False
    cache: bool = False
    fast_decode: Optional[bool] = None

    def decodes_fast(self, transform: "ImageTransform") -> bool:
        """Reduced-scale JPEG decoding: as asked, else on for training (speed), off for evaluation (exact
        pixels)."""
        return transform.train if self.fast_decode is None else self.fast_decode


class MultiLabelDataset(Dataset):
    """Images, targets and paths from a prepared file (dense JSON or sparse JSON Lines).

    An index may be an int or ``(index, seed)``: with a seed the random augmentation is a
    function of the seed alone, which makes training reproducible and exactly resumable.
    With ``ImageReading(cache=True)`` each image is decoded once and kept in memory by the process that
    loads it (meant for small datasets with ``--num_workers 0``, such as the demo).
    """

    def __init__(self, json_path: str, transform: ImageTransform, num_classes: Optional[int] = None,
                 data_root: Optional[str] = None, reading: ImageReading = ImageReading(), require_labels: bool = True,
                 partial_labels: bool = False, num_classes_from: Optional[str] = None):
        self.json_path = json_path
        allowed = (PARTIAL_TRAIN_LABELS if partial_labels else TRAIN_LABELS) if transform.train else TEST_LABELS
        table = load_table(json_path, num_classes, require_labels, allowed, num_classes_from)
        if partial_labels:  # its -1 is unknown, also where these records are evaluated (a --val_split)
            table = replace(table, minus_one_unknown=True)
        base = None if data_root else relative_base(table.path(0), json_path)
        if data_root:
            table = table.with_paths(reroot(table.paths(), data_root, json_path))
        elif base is not None:
            table = table.with_paths([p if os.path.isabs(p) else os.path.join(base, p) for p in table.paths()])
        self.table = table
        self.records = Records(self.table)
        self.has_labels = self.table.has_labels
        self.num_classes = num_classes or self.table.num_classes
        self.transform = transform
        self.skip_bad_images = reading.skip_bad
        self._cache: Optional[Dict[int, Image.Image]] = {} if reading.cache else None
        self._targets: Optional[np.ndarray] = None
        self.fast_decode = reading.decodes_fast(transform)
        self.record_numbers: Optional[np.ndarray] = None  # a subset's records in the file (for messages)

    def subset(self, rows, transform: ImageTransform, fast_decode: Optional[bool] = None) -> "MultiLabelDataset":
        """The records ``rows`` of this file as a dataset of their own, with ``transform`` (a --val_split's
        two sides; ``fast_decode`` as for a new dataset); messages name a record by its number in the file."""
        out = copy.copy(self)
        out.table = self.table.take(rows)
        out.records = Records(out.table)
        out.record_numbers = np.asarray(rows) if self.record_numbers is None else self.record_numbers[rows]
        out.transform, out.fast_decode = transform, ImageReading(fast_decode=fast_decode).decodes_fast(transform)
        out._cache = {} if self._cache is not None else None
        out._targets = None
        return out

    def describe_record(self, idx: int) -> str:
        number = idx if self.record_numbers is None else int(self.record_numbers[idx])
        return f"record {number} of {self.json_path}"

    def __len__(self) -> int:
        return len(self.table)

    def targets(self):
        """(N, C) int8 in the evaluator's convention (``LabelTable.eval_targets``), built once: evaluation
        asks for it every epoch. Beyond DENSE_LIMIT entries (OpenImages), the table's rows instead."""
        if self._targets is None:
            dense = fits_dense(len(self.table), self.num_classes or 0)
            self._targets = self.table.eval_targets() if dense else TableRows(self.table)
        return self._targets

    def load_image(self, idx: int) -> Image.Image:
        if self._cache is None:
            return self._decode(idx)
        if idx not in self._cache:
            self._cache[idx] = self._decode(idx)
        return self._cache[idx]

    def _decode(self, idx: int) -> Image.Image:
        path = self.table.path(idx)
        box = self.table.bbox(idx)
        where = f"{path} ({self.describe_record(idx)})"
        # JPEG: decode at a reduced scale when the image is much larger than the input (faster; the
        # pixels differ slightly from a full decode + resize); never for person crops
        draft = int(self.transform.img_size * 1.2) if self.fast_decode and box is None else None
        img = read_rgb(path, where, draft)
        if box is not None:
            img = crop_box(img, box, where)
        return img

    def __getitem__(self, key):
        idx, seed = key if isinstance(key, tuple) else (key, None)
        try:
            img = self.load_image(idx)
        except DataError as e:
            if not self.skip_bad_images:
                raise
            warnings.warn(f"skipped: {e}")
            return None
        rng = random.Random(seed) if seed is not None else None
        image = self.transform(img, rng)
        if self.has_labels:
            target = torch.from_numpy(self.table.target(idx).astype(np.int64))
        else:
            target = torch.zeros(self.num_classes or 0, dtype=torch.int64)
        return image, target, self.table.path(idx), idx


def collate_skipping_bad(batch):
    """Default collation, dropping samples that were skipped as unreadable (None)."""
    kept = [b for b in batch if b is not None]
    skipped = len(batch) - len(kept)
    if not kept:
        return None, skipped
    images = torch.stack([b[0] for b in kept])
    targets = torch.stack([b[1] for b in kept])
    paths = [b[2] for b in kept]
    indices = torch.tensor([b[3] for b in kept], dtype=torch.int64)
    return (images, targets, paths, indices), skipped
