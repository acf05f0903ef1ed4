"""Multi-label datasets from the prepared JSON files, their transforms, and the table of known datasets.

A prepared file is a JSON list of records ``{"img_path": str, "target": [int] * C}`` (WIDER records
also carry ``"bbox": [x, y, w, h]``, the person to crop). Workers return uint8 image tensors;
conversion to float and normalisation happen on the device (``pipeline.runtime.to_model_input``).
"""
from __future__ import annotations

import math
import os
import random
import warnings
from dataclasses import dataclass, field
from collections.abc import Sequence
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from pipeline.classes import COCO_CLASSES, DEMO_CLASSES, VOC_CLASSES, WIDER_ATTRIBUTES
from pipeline.errors import DataError
from pipeline.images import crop_box, read_rgb, resize_square
from pipeline.jsonfile import read_json  # noqa: F401  (re-exported: callers import it from here)
from pipeline.labels import DENSE_LIMIT, LabelTable, TableRows, from_dense, is_sparse_file, read_sparse


# the strong recipe on the demo (a small CNN from scratch, 630 steps): a from-scratch AdamW LR; an EMA whose
# horizon (1 / (1 - decay) = 100 steps) fits the run (0.9997's 3,333 steps would outlast it); no Cutout: a
# square of half the 64 px side hides whole shapes whose labels stay on (best mAP 96.6 with it, 99.2
# without: benchmarks/bench_demo_variants.py, README)
DEMO_STRONG = dict(lr=2e-3, ema=0.99, cutout=0.0)


@dataclass(frozen=True)
class DatasetSpec:
    """A known dataset's files and the settings the paper's recipe uses for it."""
    classes: Tuple[str, ...]           # empty: the names come from --classes or a file beside the JSON
    train_json: Optional[str]          # None: --train_json / --test_json name the files
    test_json: Optional[str]
    img_size: int
    batch_size: int
    decay_every: int                   # x0.1 every N epochs
    crop: bool = True                  # random resized crop in training (WIDER: flip only)
    normalize: str = "unit"            # input normalisation, the authors' rule: by dataset, whatever the backbone
    model: str = "resnet101"           # default backbone
    train_overrides: Dict[str, object] = field(default_factory=dict)  # main.py defaults it changes
    recipe_overrides: Dict[str, Dict[str, object]] = field(default_factory=dict)  # --recipe name -> its changes

    @property
    def num_cls(self) -> int:
        return len(self.classes)


DATASETS: Dict[str, DatasetSpec] = {
    "voc07": DatasetSpec(tuple(VOC_CLASSES), "data/voc07/trainval_voc07.json", "data/voc07/test_voc07.json",
                         img_size=448, batch_size=16, decay_every=4),
    "voc12": DatasetSpec(tuple(VOC_CLASSES), "data/voc12/trainval_voc12.json", "data/voc12/test_voc12.json",
                         img_size=448, batch_size=16, decay_every=4),
    "coco": DatasetSpec(tuple(COCO_CLASSES), "data/coco/train_coco2014.json", "data/coco/val_coco2014.json",
                        img_size=448, batch_size=16, decay_every=5),
    "wider": DatasetSpec(tuple(WIDER_ATTRIBUTES), "data/wider/trainval_wider.json", "data/wider/test_wider.json",
                         img_size=224, batch_size=64, decay_every=5, crop=False, normalize="half"),
    # the built-in generated dataset: a small CNN trained from scratch on CPU in a few minutes
    "demo": DatasetSpec(tuple(DEMO_CLASSES), "data/demo/train_demo.json", "data/demo/test_demo.json",
                        img_size=64, batch_size=32, decay_every=4, model="small_cnn",
                        train_overrides=dict(pretrained="none", num_workers=0, cache_images=True),
                        recipe_overrides={"paper": dict(lr=0.05, total_epoch=10, warmup_epoch=1),
                                          "strong": dict(DEMO_STRONG, total_epoch=10)}),
    # sparse label files (utils/prepare/prepare_openimages.py, prepare_nuswide.py), class names in classes.txt
    # beside them; OpenImages: train on train, report on test (ASL, ML-Decoder)
    "openimages": DatasetSpec((), "data/openimages/train_openimages.jsonl", "data/openimages/test_openimages.jsonl",
                              img_size=448, batch_size=16, decay_every=5),
    "nuswide": DatasetSpec((), "data/nuswide/train_nuswide.jsonl", "data/nuswide/test_nuswide.jsonl",
                           img_size=448, batch_size=16, decay_every=5),
    # your own prepared files (--train_json / --test_json without --dataset): VOC's recipe
    "custom": DatasetSpec((), None, None, img_size=448, batch_size=16, decay_every=4),
}
CUSTOM = "custom"


TRAIN_LABELS = (0, 1)
PARTIAL_TRAIN_LABELS = (-1, 0, 1)  # with --partial_labels: -1 unknown
TEST_LABELS = (-1, 0, 1, 99)  # -1 absent, 0 negative (VOC: difficult), 1 present, 99 unspecified (WIDER)


def load_records(json_path: str, num_classes: Optional[int] = None, require_labels: bool = True,
                 allowed_labels: Tuple[int, ...] = TEST_LABELS) -> List[dict]:
    """Read and validate a prepared JSON file: a list of {"img_path", "target"[, "bbox"]}.
    Training files hold 0/1 targets; test files may also hold -1 (VOC absent) and 99 (WIDER unspecified)."""
    if not os.path.isfile(json_path):
        raise DataError(f"{json_path}: no such JSON file (prepare the dataset first, see README)")
    records = read_json(json_path)
    if not isinstance(records, list):
        raise DataError(f"{json_path}: expected a JSON list of records, found {type(records).__name__}")
    if not records:
        raise DataError(f"{json_path}: holds no records")
    labelled = None
    expected_len, expected_from = num_classes, "--num_cls is"
    for i, r in enumerate(records):
        if not isinstance(r, dict) or not isinstance(r.get("img_path"), str):
            raise DataError(f"{json_path}: record {i} is not an object with a string 'img_path'")
        has = "target" in r
        if labelled is None:
            labelled = has
        elif has != labelled:
            raise DataError(f"{json_path}: record {i} ({r['img_path']}) {'has' if has else 'lacks'} a target, "
                            f"unlike record 0")
        if has:
            t = r["target"]
            if not isinstance(t, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in t):
                raise DataError(f"{json_path}: record {i} ({r['img_path']}): target must be a list of integers")
            if not t:
                raise DataError(f"{json_path}: record {i} ({r['img_path']}): empty target list")
            bad = next((j for j, v in enumerate(t) if v not in allowed_labels), None)
            if bad is not None:
                hint = " (-1 = unknown: pass --partial_labels)" if t[bad] == -1 and allowed_labels == TRAIN_LABELS else ""
                raise DataError(f"{json_path}: record {i} ({r['img_path']}): class {bad} has label {t[bad]}; "
                                f"this file may hold {', '.join(map(str, allowed_labels))}{hint}")
            if expected_len is None:
                expected_len, expected_from = len(t), "record 0 has"
            elif len(t) != expected_len:
                raise DataError(f"{json_path}: record {i} ({r['img_path']}) has {len(t)} labels, "
                                f"{expected_from} {expected_len}")
        if "bbox" in r:
            b = r["bbox"]
            if not (isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                                and math.isfinite(v) for v in b)):
                raise DataError(f"{json_path}: record {i} ({r['img_path']}): bbox must be [x, y, w, h], four finite "
                                f"numbers (got {b!r})")
    if require_labels and not labelled:
        raise DataError(f"{json_path}: records have no 'target' labels; for an unlabelled test list, "
                        "write predictions with val.py --voc_submission DIR or --save_scores PATH")
    return records


def _split(path: str) -> List[str]:
    return [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]


def reroot(paths: List[str], data_root: str, json_path: str = "") -> List[str]:
    """Replace the folder part of every path that lies before the dataset's own layout.
    The number of leading components to drop is found on the first path, as the smallest
    that makes ``data_root/<rest>`` an existing file, and applied to all paths.
    """
    parts = _split(paths[0])
    for drop in range(len(parts)):
        if os.path.isfile(os.path.join(data_root, *parts[drop:])):
            break
    else:
        raise DataError(f"{json_path}: --data_root {data_root}: no tail of record 0's path "
                        f"{paths[0]} exists under it")
    return [os.path.join(data_root, *_split(p)[drop:]) for p in paths]


def resolve_relative(paths: List[str], json_path: str) -> Optional[List[str]]:
    """Relative paths are taken from the working directory (the authors' convention); when that fails
    for the first but works from the JSON file's folder, all are taken from there (None: unchanged)."""
    first = paths[0]
    base = os.path.dirname(os.path.abspath(json_path))
    if os.path.isabs(first) or os.path.exists(first) or not os.path.exists(os.path.join(base, first)):
        return None
    return [p if os.path.isabs(p) else os.path.join(base, p) for p in paths]


def load_table(json_path: str, num_classes: Optional[int] = None, require_labels: bool = True,
               allowed_labels: Tuple[int, ...] = TEST_LABELS) -> LabelTable:
    """A prepared file, dense JSON or sparse JSON Lines (``pipeline.labels``), as a LabelTable."""
    if not os.path.isfile(json_path):
        raise DataError(f"{json_path}: no such JSON file (prepare the dataset first, see README)")
    if is_sparse_file(json_path):
        return read_sparse(json_path, num_classes)[0]
    return from_dense(load_records(json_path, num_classes, require_labels, allowed_labels), num_classes)


# --- transforms --------------------------------------------------------------------------
def _resized_crop_box(w: int, h: int, rng: random.Random, scale=(0.7, 1.0), ratio=(3 / 4, 4 / 3)):
    """A random crop box of the given area scale and aspect ratio (RandomResizedCrop's rule)."""
    area = w * h
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_r))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            x = rng.randint(0, w - cw)
            y = rng.randint(0, h - ch)
            return (x, y, x + cw, y + ch)
    in_ratio = w / h  # fallback: central crop clamped to the ratio range
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    x, y = (w - cw) // 2, (h - ch) // 2
    return (x, y, x + cw, y + ch)


def make_randaugment():
    """torchvision's RandAugment (2 ops, magnitude 9 of 31) with its table of op magnitudes built once per
    image size rather than on every call (the same ops and draws; 0.4 ms less per 448 px image)."""
    from torchvision.transforms import RandAugment

    class RandAugmentCachedSpace(RandAugment):
        _spaces: dict = {}

        def _augmentation_space(self, num_bins, image_size):
            key = (num_bins, tuple(image_size))
            if key not in self._spaces:
                self._spaces[key] = super()._augmentation_space(num_bins, image_size)
            return self._spaces[key]

    return RandAugmentCachedSpace()


class ImageTransform:
    """Train: random flip + random resized crop (scale 0.7-1.0) to a square, or flip + resize
    (``crop=False``, WIDER); then, when asked, torchvision's RandAugment (2 ops, magnitude 9) on the
    8-bit image and a Cutout: one square of ``cutout`` x the side, centred anywhere (clipped at the
    borders), filled with one random colour. Test: resize to a square. Output: uint8 (3, S, S).

    Every random choice comes from ``rng``: RandAugment draws from torch's default generator, which is
    seeded from ``rng`` for the call and then put back as it was."""

    def __init__(self, img_size: int, train: bool, crop: bool = True, randaugment: bool = False,
                 cutout: float = 0.0):
        self.img_size = img_size
        self.train = train
        self.crop = crop
        self.cutout = cutout if train else 0.0
        self.randaugment = make_randaugment() if train and randaugment else None

    def __call__(self, img: Image.Image, rng: Optional[random.Random] = None) -> torch.Tensor:
        rng = rng or random
        box = None
        if self.train and self.crop and img.width and img.height:
            box = _resized_crop_box(img.width, img.height, rng)
        img = resize_square(img, self.img_size, box)
        if self.train and rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        if self.randaugment is not None:
            generator = torch.default_generator  # (torch.manual_seed would cost 0.3 ms a call)
            saved = generator.get_state()
            generator.manual_seed(rng.getrandbits(63))
            try:
                img = self.randaugment(img)
            finally:
                generator.set_state(saved)
        pixels = np.array(img, dtype=np.uint8)  # a writable copy
        if self.cutout > 0:
            cut_out(pixels, self.cutout, rng)
        return torch.from_numpy(pixels).permute(2, 0, 1)


def cut_out(pixels: np.ndarray, fraction: float, rng: random.Random) -> None:
    """In place on a uint8 (H, W, 3) image: a square of side ``fraction`` x min(H, W), its centre drawn
    uniformly over the image (the part inside is filled), one random colour."""
    h, w = pixels.shape[:2]
    side = int(round(fraction * min(h, w)))
    if side <= 0:
        return
    cy, cx = rng.randrange(h), rng.randrange(w)
    y0, y1 = max(0, cy - side // 2), min(h, cy - side // 2 + side)
    x0, x1 = max(0, cx - side // 2), min(w, cx - side // 2 + side)
    pixels[y0:y1, x0:x1] = [rng.randrange(256) for _ in range(3)]


# --- dataset -----------------------------------------------------------------------------
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


class MultiLabelDataset(Dataset):
    """Images, targets and paths from a prepared file (dense JSON or sparse JSON Lines).

    An index may be an int or ``(index, seed)``: with a seed the random augmentation is a
    function of the seed alone, which makes training reproducible and exactly resumable.
    With ``cache_images`` each image is decoded once and kept in memory by the process that
    loads it (meant for small datasets with ``--num_workers 0``, such as the demo).
    """

    def __init__(self, json_path: str, transform: ImageTransform, num_classes: Optional[int] = None,
                 data_root: Optional[str] = None, skip_bad_images: bool = False, require_labels: bool = True,
                 cache_images: bool = False, fast_decode: Optional[bool] = None, partial_labels: bool = False):
        self.json_path = json_path
        allowed = (PARTIAL_TRAIN_LABELS if partial_labels else TRAIN_LABELS) if transform.train else TEST_LABELS
        table = load_table(json_path, num_classes, require_labels, allowed)
        paths = None
        if data_root:
            paths = reroot(table.paths(), data_root, json_path)
        elif resolve_relative([table.path(0)], json_path) is not None:  # checked on the first path alone
            paths = resolve_relative(table.paths(), json_path)
        self.table = table if paths is None else table.with_paths(paths)
        self.records = Records(self.table)
        self.has_labels = self.table.has_labels
        self.num_classes = num_classes or self.table.num_classes
        self.transform = transform
        self.skip_bad_images = skip_bad_images
        self._cache: Optional[Dict[int, Image.Image]] = {} if cache_images else None
        self._targets: Optional[np.ndarray] = None
        # reduced-scale JPEG decoding: on for training (speed), off for evaluation (exact pixels)
        self.fast_decode = transform.train if fast_decode is None else fast_decode

    def __len__(self) -> int:
        return len(self.table)

    def targets(self):
        """(N, C) int8 in the evaluator's convention (``LabelTable.eval_targets``), built once: evaluation
        asks for it every epoch. Beyond DENSE_LIMIT entries (OpenImages), the table's rows instead."""
        if self._targets is None:
            large = len(self.table) * (self.num_classes or 0) > DENSE_LIMIT
            self._targets = TableRows(self.table) if large else self.table.eval_targets()
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
        where = f"{path} (record {idx} of {self.json_path})"
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
