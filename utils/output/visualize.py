"""Attention heatmaps: a class's attention map upsampled and drawn over its image.

For a head of finite temperature T the map is softmax over locations of T * s (what CSRA pools
with); for T = infinity (and the GAP head) it is the class's score map s itself.

The map is drawn so the object stays visible: colour is laid over the image in proportion to the
attention (where the model does not look, the image keeps its own colours), and a white contour
surrounds the locations holding at least half of the map's peak. Small inputs are enlarged by a whole
factor with nearest-neighbour pixels, so a 64 px image is drawn at 256 px and its pixels stay sharp.
"""
from __future__ import annotations

import math
import os
from typing import List, NamedTuple, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont

from pipeline.models.csra import HeadMaps
from utils.output.fileio import make_folder, save_image_atomic

COLOURS = "jet"            # the heatmaps' colour map (the report's colour scale uses it too)
MIN_SIDE = 256             # smaller images are enlarged to at least this shorter side
MAX_ALPHA = 0.7            # colour opacity at the map's peak; 0 where the map is 0
CONTOUR_LEVEL = 0.5        # the contour: half of the map's peak
PANEL_HEIGHT = 256
CAPTION_HEIGHT = 26
SCALE_WIDTH = 90           # the grid's colour scale column


def font(size: int = 15) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow before 10.1: the fixed bitmap font
        return ImageFont.load_default()


def class_map(out: HeadMaps, image_index: int, class_index: int, head: int = 0) -> torch.Tensor:
    """(h, w) map of one class from ``forward_with_maps`` output (see module docstring)."""
    return out.heatmap(head)[image_index, class_index].float()


def upsample(m: torch.Tensor, size: Tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of an (h, w) map to (height, width), rescaled to [0, 1]."""
    up = F.interpolate(m.detach()[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0]
    lo, hi = float(up.min()), float(up.max())
    up = (up - lo) / (hi - lo) if hi > lo else torch.zeros_like(up)
    return up.cpu().numpy()


def enlarge(img: Image.Image, min_side: int = MIN_SIDE) -> Image.Image:
    """The image enlarged by the smallest whole factor that gives its shorter side ``min_side`` pixels
    (nearest neighbour: each input pixel becomes a sharp square); larger images are kept as they are."""
    factor = max(1, math.ceil(min_side / max(1, min(img.width, img.height))))
    img = img.convert("RGB")
    return img if factor == 1 else img.resize((img.width * factor, img.height * factor), Image.NEAREST)


def contour(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """The boundary pixels of a boolean mask (those with a 4-neighbour outside it), ``width`` pixels wide."""
    inner = mask.copy()
    for _ in range(width):
        shrunk = inner.copy()
        shrunk[1:] &= inner[:-1]
        shrunk[:-1] &= inner[1:]
        shrunk[:, 1:] &= inner[:, :-1]
        shrunk[:, :-1] &= inner[:, 1:]
        inner = shrunk
    return mask & ~inner


def overlay(img: Image.Image, heat: np.ndarray) -> Image.Image:
    """Colour a [0, 1] heat array (H, W) with COLOURS and lay it over the RGB image of the same size with
    opacity MAX_ALPHA * heat, plus a white contour at CONTOUR_LEVEL."""
    base = np.asarray(img.convert("RGB"), dtype=np.float32)
    colour = colormaps[COLOURS](heat)[..., :3] * 255.0
    alpha = (MAX_ALPHA * heat)[..., None]
    out = base * (1.0 - alpha) + colour * alpha
    out[contour(heat >= CONTOUR_LEVEL, width=max(1, min(heat.shape) // 160))] = 255.0
    return Image.fromarray(np.round(out).astype(np.uint8))


def scale_colours(levels: np.ndarray) -> np.ndarray:
    """(L, 3) uint8: each attention level's colour over white at the opacity ``overlay`` gives it (what a
    colour scale shows)."""
    alpha = MAX_ALPHA * levels[:, None]
    return (((1 - alpha) + alpha * colormaps[COLOURS](levels)[:, :3]) * 255).astype(np.uint8)


def colour_scale(height: int, width: int = SCALE_WIDTH) -> Image.Image:
    """A vertical colour scale, 'high' at the top, as the overlays draw it (with the contour's level)."""
    panel = Image.new("RGB", (width, height), "white")
    top, bottom, bar_w = 24, height - 8, 18
    ramp = scale_colours(np.linspace(1, 0, bottom - top))
    panel.paste(Image.fromarray(np.repeat(ramp[:, None], bar_w, axis=1)), (8, top))
    draw = ImageDraw.Draw(panel)
    small = font(13)
    draw.text((4, 4), "attention", fill="black", font=small)
    draw.text((bar_w + 12, top), "high", fill="black", font=small)
    draw.text((bar_w + 12, bottom - 16), "low", fill="black", font=small)
    y = top + round((1 - CONTOUR_LEVEL) * (bottom - top))
    draw.line([(6, y), (bar_w + 10, y)], fill="black", width=1)
    draw.text((bar_w + 12, y - 8), "contour", fill="black", font=small)
    return panel


def _panel(img: Image.Image, caption: str) -> Image.Image:
    w = max(1, round(img.width * PANEL_HEIGHT / img.height))
    panel = Image.new("RGB", (w, PANEL_HEIGHT + CAPTION_HEIGHT), "white")
    resample = Image.NEAREST if img.height < PANEL_HEIGHT else Image.BILINEAR
    panel.paste(img.convert("RGB").resize((w, PANEL_HEIGHT), resample), (0, 0))
    ImageDraw.Draw(panel).text((4, PANEL_HEIGHT + 4), caption, fill="black", font=font())
    return panel


def make_grid(original: Image.Image, overlays: Sequence[Image.Image], captions: Sequence[str]) -> Image.Image:
    """One row: the input, one captioned panel per class, and the colour scale."""
    panels = [_panel(original, "input")] + [_panel(o, c) for o, c in zip(overlays, captions)]
    panels.append(colour_scale(PANEL_HEIGHT + CAPTION_HEIGHT))
    grid = Image.new("RGB", (sum(p.width for p in panels), panels[0].height), "white")
    x = 0
    for p in panels:
        grid.paste(p, (x, 0))
        x += p.width
    return grid


def safe_name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


class ImageMaps(NamedTuple):
    """One image's attention maps in a batch's ``forward_with_maps`` output: its row and the head shown."""
    out: HeadMaps
    index: int
    head: int = 0

    def of(self, class_index: int) -> torch.Tensor:
        return class_map(self.out, self.index, class_index, self.head)


def save_heatmaps(out_dir: str, stem: str, img: Image.Image, maps: ImageMaps, classes: Sequence[int],
                  class_names: Sequence[str], scores: Sequence[float]) -> List[str]:
    """Write one overlay PNG per class and one grid PNG, named from ``stem``; return the paths written."""
    make_folder(out_dir)
    stem = safe_name(stem)
    shown = enlarge(img)
    written, overlays, captions = [], [], []
    for c in classes:
        heat = upsample(maps.of(c), (shown.height, shown.width))
        ov = overlay(shown, heat)
        path = os.path.join(out_dir, f"{stem}_{safe_name(class_names[c])}.png")
        save_image_atomic(ov, path)
        written.append(path)
        overlays.append(ov)
        captions.append(f"{class_names[c]}: score {scores[c]:.2f}")
    grid_path = os.path.join(out_dir, f"{stem}_grid.png")
    save_image_atomic(make_grid(shown, overlays, captions), grid_path)
    written.append(grid_path)
    return written


def fit_thumbnail(img: Image.Image, size: int) -> Image.Image:
    """A copy whose longer side is ``size`` pixels (small images are enlarged, so they stay legible)."""
    if not img.width or not img.height:  # an empty person box
        return Image.new("RGB", (size, size))
    scale = size / max(img.width, img.height)
    return img.convert("RGB").resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                                     Image.BILINEAR)
