"""The one image reader: training and evaluation data, demo.py, predict_onnx.py and the report's
thumbnails all open images here, so every entry point sees the same 8-bit RGB pixels.

The reader itself (``read_rgb``, ``to_rgb8``, ``resize_square``) is defined in the stand-alone
``predict_onnx.py``, which must run without this repository; this module adds the crops and resizes
only training and evaluation use. Modes: 8-bit RGB as stored; palette, grayscale, alpha and CMYK
through PIL's ``convert("RGB")`` (alpha is dropped, as the authors' ``Image.open(p).convert("RGB")``
drops it); 16-bit, 32-bit integer and float images are scaled to 8 bits (PIL's own conversion would
clip them to a constant white or black image). Imports no torch.
"""
from __future__ import annotations

from PIL import Image

from pipeline.errors import DataError
from predict_onnx import IMAGE_EXTENSIONS, read_rgb, resize_square  # noqa: F401  (defined there: see above)


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
