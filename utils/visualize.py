"""Attention heatmaps: a class's attention map upsampled and overlaid on its image.

For a head of finite temperature T the map is softmax over locations of T * s (what CSRA pools
with); for T = infinity (and the GAP head) it is the class's score map s itself.
"""
from __future__ import annotations

import os
from typing import List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont

from pipeline.csra import HeadMaps
from utils.fileio import make_folder, save_image_atomic

PANEL_HEIGHT = 224
CAPTION_HEIGHT = 22


def class_map(out: HeadMaps, image_index: int, class_index: int, head: int = 0) -> torch.Tensor:
    """(h, w) map of one class from ``forward_with_maps`` output (see module docstring)."""
    return out.heatmap(head)[image_index, class_index].float()


def upsample(m: torch.Tensor, size: Tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of an (h, w) map to (height, width), rescaled to [0, 1]."""
    up = F.interpolate(m.detach()[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0]
    lo, hi = float(up.min()), float(up.max())
    up = (up - lo) / (hi - lo) if hi > lo else torch.zeros_like(up)
    return up.cpu().numpy()


def overlay(img: Image.Image, heat: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """Blend a [0, 1] heat array (H, W) coloured with 'jet' over the RGB image of the same size."""
    colour = (colormaps["jet"](heat)[..., :3] * 255).astype(np.uint8)
    return Image.blend(img.convert("RGB"), Image.fromarray(colour), alpha)


def _panel(img: Image.Image, caption: str) -> Image.Image:
    w = max(1, round(img.width * PANEL_HEIGHT / img.height))
    panel = Image.new("RGB", (w, PANEL_HEIGHT + CAPTION_HEIGHT), "white")
    panel.paste(img.convert("RGB").resize((w, PANEL_HEIGHT), Image.BILINEAR), (0, 0))
    draw = ImageDraw.Draw(panel)
    draw.text((4, PANEL_HEIGHT + 4), caption, fill="black", font=ImageFont.load_default())
    return panel


def make_grid(original: Image.Image, overlays: Sequence[Image.Image], captions: Sequence[str]) -> Image.Image:
    """One row: the original image, then one captioned panel per class."""
    panels = [_panel(original, "input")] + [_panel(o, c) for o, c in zip(overlays, captions)]
    grid = Image.new("RGB", (sum(p.width for p in panels), panels[0].height), "white")
    x = 0
    for p in panels:
        grid.paste(p, (x, 0))
        x += p.width
    return grid


def safe_name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def save_heatmaps(out_dir: str, image_path: str, img: Image.Image, out: HeadMaps, image_index: int,
                  classes: Sequence[int], class_names: Sequence[str], scores: Sequence[float],
                  head: int = 0, stem: str = None) -> List[str]:
    """Write one overlay PNG per class and one grid PNG; return the paths written. ``stem`` names
    the files (default: the image's file name without extension)."""
    make_folder(out_dir)
    stem = safe_name(stem or os.path.splitext(os.path.basename(image_path))[0])
    written, overlays, captions = [], [], []
    for c in classes:
        heat = upsample(class_map(out, image_index, c, head), (img.height, img.width))
        ov = overlay(img, heat)
        path = os.path.join(out_dir, f"{stem}_{safe_name(class_names[c])}.png")
        save_image_atomic(ov, path)
        written.append(path)
        overlays.append(ov)
        captions.append(f"{class_names[c]} {scores[c]:.2f}")
    grid_path = os.path.join(out_dir, f"{stem}_grid.png")
    save_image_atomic(make_grid(img, overlays, captions), grid_path)
    written.append(grid_path)
    return written


def fit_thumbnail(img: Image.Image, size: int) -> Image.Image:
    """A copy whose longer side is ``size`` pixels (small images are enlarged, so they stay legible)."""
    if not img.width or not img.height:  # an empty person box
        return Image.new("RGB", (size, size))
    scale = size / max(img.width, img.height)
    return img.convert("RGB").resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                                     Image.BILINEAR)
