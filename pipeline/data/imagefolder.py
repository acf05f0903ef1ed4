"""Single-label images in the ImageNet validation layout (one sub-folder per class), for the
training-free rule on ImageNet classifiers (paper Table 1).

The sorted folder names are the model's outputs 0..N-1, as torchvision's ``ImageFolder`` numbers
them (for ImageNet's 1,000 WordNet ids that is the standard class order); ``class_index`` maps
folder names to outputs instead, from the common ``imagenet_class_index.json`` form
``{"0": ["n01440764", "tench"], ...}``.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.errors import DataError
from pipeline.images import IMAGE_EXTENSIONS, read_rgb, resize_and_centre_crop
from pipeline.jsonfile import read_json


def read_class_index(path: str) -> Dict[str, int]:
    """Folder name -> output index, from ``{"<index>": ["<folder name>", "<label>"], ...}``."""
    data = read_json(path)
    try:
        mapping = {str(entry[0]): int(index) for index, entry in data.items()}
    except (AttributeError, TypeError, ValueError, IndexError, KeyError):
        raise DataError(f"{path}: not a class index of the form {{\"0\": [\"n01440764\", \"tench\"], ...}}") from None
    negative = next((name for name, i in mapping.items() if i < 0), None)
    if negative is not None:
        raise DataError(f"{path}: {negative} maps to output {mapping[negative]}; outputs are numbered from 0")
    return mapping


class ImageFolderSet(Dataset):
    """(uint8 (3, S, S) image, output index) for every image file under ``root/<class folder>/``."""

    def __init__(self, root: str, img_size: int, class_index: Optional[str] = None, crop_fraction: float = 0.875):
        if not os.path.isdir(root):
            raise DataError(f"--img_dir {root}: no such folder")
        self.folders = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        if not self.folders:
            raise DataError(f"--img_dir {root}: no class sub-folders (expected the ImageNet validation layout: "
                            "one folder per class)")
        if class_index:
            mapping = read_class_index(class_index)
            unknown = [f for f in self.folders if f not in mapping]
            if unknown:
                raise DataError(f"{os.path.join(root, unknown[0])}: folder name not in --class_index {class_index} "
                                f"({len(unknown)} of {len(self.folders)} folders are not)")
        else:
            mapping = {f: i for i, f in enumerate(self.folders)}
        self.output_of = {f: mapping[f] for f in self.folders}
        self.samples: List[Tuple[str, int]] = []
        for folder in self.folders:
            path = os.path.join(root, folder)
            self.samples += [(os.path.join(path, name), mapping[folder]) for name in sorted(os.listdir(path))
                             if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS]
        if not self.samples:
            raise DataError(f"--img_dir {root}: no image files in its class folders")
        self.img_size, self.crop_fraction, self.class_index = img_size, crop_fraction, class_index

    def check_outputs(self, outputs: int, model: str) -> None:
        """One line when a folder maps to an output the model does not have (it could never score)."""
        beyond = [f for f in self.folders if self.output_of[f] >= outputs]
        if beyond:
            f = beyond[0]
            source = f"--class_index {self.class_index} maps" if self.class_index else "the sorted folder names map"
            raise DataError(f"{source} folder {f} to output {self.output_of[f]}, but {model} has {outputs} outputs "
                            f"(0..{outputs - 1}; {len(beyond)} of {len(self.folders)} folders map beyond them)")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        img = resize_and_centre_crop(read_rgb(path), self.img_size, self.crop_fraction)
        return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1), label
