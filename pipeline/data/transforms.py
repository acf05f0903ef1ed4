"""The image transforms: training's random resized crop and flip (or flip and resize), RandAugment and
Cutout, evaluation's resize; every random choice from the sample's own generator."""
from __future__ import annotations

import math
import random
from typing import Optional

import numpy as np
import torch
from PIL import Image

from pipeline.images import resize_square


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
    image size rather than on every call (the same ops and draws; the time saved: the README's Development
    notes)."""
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
            generator = torch.default_generator  # (torch.manual_seed costs more: the README's Development notes)
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
