"""Class names of the built-in datasets, and reading a dataset's own names file."""
from __future__ import annotations

import json
import os
from typing import List

from pipeline.errors import DataError

VOC_CLASSES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]

# In COCO category-id order (ids 1..90 with gaps).
COCO_CLASSES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
]

WIDER_ATTRIBUTES = [
    "Male", "longHair", "sunglass", "Hat", "Tshirt", "longSleeve", "formal", "shorts", "jeans",
    "longPants", "skirt", "faceMask", "logo", "stripe",
]

DEMO_CLASSES = ["circle", "square", "triangle", "cross", "ring", "bar"]


def read_text(path: str, what: str) -> str:
    """A UTF-8 text file (a byte-order mark accepted), with one-line errors naming it as ``what``."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such {what}")
    try:
        with open(path, encoding="utf-8-sig") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None


def load_class_names(path: str) -> List[str]:
    """A names file: a JSON list of strings, or plain text with one name per line."""
    text = read_text(path, "class-names file")
    if path.endswith(".json"):
        try:
            names = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise DataError(f"{path}: expected a JSON list of class-name strings")
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise DataError(f"{path}: holds no class names")
    return names
