"""Generate the built-in demo dataset: small images holding several small shapes.

Each image holds 1-4 objects drawn from six shape classes, in random colours, at random
places and sizes (small relative to the image: the case where CSRA helps most).
Deterministic from --seed. Writes JPEGs plus train/test JSON in the prepared-record format (img_path, target).

    python utils/prepare/prepare_demo.py [--out_dir data/demo] [--num_train 2000] [--num_test 500]
"""
from __future__ import annotations

import colorsys
import os
import random

from PIL import Image, ImageDraw

from pipeline.data.classes import DEMO_CLASSES
from utils.configuration.entry import ScriptParser
from utils.output.fileio import OutputError, describe_os_error, make_folder
from utils.output.progress import bar
from utils.prepare.common import (CLASS_FILE, PrepareError, add_force_flag, refuse_overwrite, run_main,
                                  write_class_names, write_split)


def save_image(img: Image.Image, path: str) -> None:
    try:
        img.save(path, quality=92)
    except OSError as e:
        raise OutputError(f"{path}: cannot write: {describe_os_error(e)}") from None


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, colour) -> None:
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    elif shape == "cross":
        t = max(1.0, r / 3)
        draw.rectangle((cx - r, cy - t, cx + r, cy + t), fill=colour)
        draw.rectangle((cx - t, cy - r, cx + t, cy + r), fill=colour)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=max(2, int(r / 3)))
    elif shape == "bar":
        t = max(1.0, r / 4)
        draw.rectangle((cx - r, cy - t, cx + r, cy + t), fill=colour)
    else:
        raise ValueError(shape)


def render_image(rng: random.Random, size: int):
    """One image and the sorted list of class indices it contains."""
    base = [rng.randint(150, 235) for _ in range(3)]
    img = Image.new("RGB", (size, size), tuple(base))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(2, 6)):  # faint clutter that is not any class
        x, y = rng.uniform(0, size), rng.uniform(0, size)
        shade = tuple(max(0, c - rng.randint(10, 40)) for c in base)
        draw.line((x, y, x + rng.uniform(-size / 3, size / 3), y + rng.uniform(-size / 3, size / 3)),
                  fill=shade, width=1)
    present = set()
    for _ in range(rng.randint(1, 4)):
        c = rng.randrange(len(DEMO_CLASSES))
        r = rng.uniform(0.06, 0.14) * size
        cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
        rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.6, 1.0), rng.uniform(0.3, 0.85))
        colour = tuple(int(255 * v) for v in rgb)
        _draw_shape(draw, DEMO_CLASSES[c], cx, cy, r, colour)
        present.add(c)
    return img, sorted(present)


def generate_demo(out_dir: str = "data/demo", num_train: int = 2000, num_test: int = 500, size: int = 64,
                  seed: int = 0, quiet: bool = False, force: bool = False) -> dict:
    """Write images and JSON files; returns the paths written. Nothing already there (JSON files, the
    class file, images) is replaced without ``force``."""
    for flag, value in (("--num_train", num_train), ("--num_test", num_test), ("--size", size)):
        if not isinstance(value, int) or value < 1:
            raise PrepareError(f"{flag} must be a positive integer (got {value})")
    if size < 16:
        raise PrepareError(f"--size must be at least 16 pixels to draw the shapes (got {size})")
    refuse_overwrite([os.path.join(out_dir, f"{s}_demo.json") for s in ("train", "test")]
                     + [os.path.join(out_dir, CLASS_FILE), os.path.join(out_dir, "images")], force)
    rng = random.Random(seed)
    outputs = {}
    for split, n in (("train", num_train), ("test", num_test)):
        make_folder(os.path.join(out_dir, "images", split))
        records = []
        for i in (range(n) if quiet else bar(range(n), desc=f"demo {split}")):
            img, present = render_image(rng, size)
            rel = os.path.join("images", split, f"{i:05d}.jpg")
            save_image(img, os.path.join(out_dir, rel))
            target = [1 if c in present else 0 for c in range(len(DEMO_CLASSES))]
            records.append({"img_path": os.path.join(out_dir, rel), "target": target})
        path = os.path.join(out_dir, f"{split}_demo.json")
        outputs[split] = write_split(path, records, DEMO_CLASSES, quiet)
    outputs["classes"] = write_class_names(out_dir, DEMO_CLASSES, quiet)
    return outputs


def main(argv=None) -> None:
    p = ScriptParser(description=__doc__)
    p.add_argument("--out_dir", default="data/demo")
    p.add_argument("--num_train", type=int, default=2000)
    p.add_argument("--num_test", type=int, default=500)
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0)
    add_force_flag(p)
    a = p.parse_args(argv)
    generate_demo(a.out_dir, a.num_train, a.num_test, a.size, a.seed, force=a.force)


if __name__ == "__main__":
    run_main(main)


def ensure_demo_files(train_json: str, test_json: str) -> None:
    """Generate the demo dataset where its files are missing (a run interrupted while generating left no
    JSON: the images are made again)."""
    if not (os.path.isfile(train_json) and os.path.isfile(test_json)):
        print(f"generating the demo dataset in {os.path.dirname(train_json)} ...")
        generate_demo(os.path.dirname(train_json), quiet=True, force=True)

