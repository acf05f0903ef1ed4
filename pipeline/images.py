"""The one image reader: training and evaluation data, demo.py, predict_onnx.py and the report's
thumbnails all open images here, so every entry point sees the same 8-bit RGB pixels.
Imports no torch (the ONNX predictor uses it).

Modes: 8-bit RGB as stored; palette, grayscale, alpha and CMYK through PIL's ``convert("RGB")``
(alpha is dropped, as the authors' ``Image.open(p).convert("RGB")`` drops it); 16-bit, 32-bit
integer and float images are scaled to 8 bits (PIL's own conversion would clip them to a
constant white or black image).
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
from PIL import Image

from pipeline.errors import DataError

WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}
Box = Tuple[float, float, float, float]


def to_rgb8(img: Image.Image, where: str) -> Image.Image:
    """An RGB 8-bit image; values of a wide image that fit no known range are refused with one line."""
    if img.mode not in WIDE_MODES:
        return img.convert("RGB")
    a = np.asarray(img)
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise DataError(f"{where}: float image holds NaN or infinite values")
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if lo < 0:
        raise DataError(f"{where}: {img.mode} image has negative values ({lo}); cannot map it to 8 bits")
    if a.dtype.kind == "f" and hi <= 1.0:
        scale = 255.0
    elif hi <= 255 and a.dtype.kind != "u":
        scale = 1.0
    elif hi <= 65535:
        scale = 255.0 / 65535.0
    else:
        raise DataError(f"{where}: {img.mode} image values reach {hi}; cannot map them to 8 bits")
    gray = np.clip(np.rint(a.astype(np.float64) * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, "L").convert("RGB")


def read_rgb(path: str, where: Optional[str] = None, draft_side: Optional[int] = None) -> Image.Image:
    """The image at ``path`` as 8-bit RGB. ``draft_side``: let a JPEG decode at a reduced scale that
    still covers that many pixels (faster; training only). Errors name ``where`` (default: the path)."""
    where = where or path
    try:
        with Image.open(path) as im:
            if draft_side:
                im.draft("RGB", (draft_side, draft_side))
            return to_rgb8(im, where)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{where}: cannot read image: {e}") from None


def resize_square(img: Image.Image, size: int, box: Optional[Box] = None) -> Image.Image:
    """``size`` x ``size``, bilinear (what torchvision's Resize does to a PIL image); ``box`` crops first.
    An empty image (a person box of zero width or height) becomes black, as PIL makes it."""
    if img.width == 0 or img.height == 0:
        return Image.new("RGB", (size, size))
    return img.resize((size, size), Image.BILINEAR, box=box)


def crop_box(img: Image.Image, bbox, where: str) -> Image.Image:
    """The person box [x, y, w, h] cut as the authors' loader cuts it: PIL's crop of (x, y, x + w, y + h),
    which rounds each coordinate and is black where the box leaves the image (all black when it lies
    wholly outside; empty for zero width or height). A box PIL refuses (negative size) is one line."""
    x, y, w, h = bbox
    try:
        return img.crop((x, y, x + w, y + h))
    except (ValueError, OverflowError) as e:
        raise DataError(f"{where}: box {list(bbox)} cannot be cropped ({e})") from None


def resize_and_centre_crop(img: Image.Image, size: int, crop_fraction: float = 0.875) -> Image.Image:
    """ImageNet's standard evaluation view: the shorter side to ``floor(size / crop_fraction)``
    (bilinear), then the centred ``size`` x ``size`` square (offsets rounded, as torchvision's)."""
    short = int(size / crop_fraction)
    w, h = img.size
    if w <= h:
        new_w, new_h = short, int(short * h / w)
    else:
        new_w, new_h = int(short * w / h), short
    img = img.resize((new_w, new_h), Image.BILINEAR)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))
