"""Predict labels for your own images, and optionally draw CSRA's attention heatmaps.

    python demo.py --load_from MODEL.pth --img_dir photos/                  # VOC classes by default
    python demo.py --dataset coco --num_heads 6 --lam 0.5 --load_from COCO.pth --img_dir a.jpg b.jpg \
        --topk 5 --output preds.csv --heatmaps heatmaps/
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys

import torch
from PIL import Image

from pipeline.dataset import DATASETS, ImageTransform
from pipeline.errors import ConfigError
from pipeline.model import load_for_inference
from pipeline.runtime import resolve_runtime
from utils import distributed as du
from utils.cli import add_model_args, add_runtime_args, model_kwargs, new_parser, parse_args, run_main
from utils.evaluation.report import class_name
from utils.visualize import list_images, save_heatmaps


def build_parser() -> argparse.ArgumentParser:
    p = new_parser("Predict labels (and heatmaps) for images.")
    add_model_args(p)
    add_runtime_args(p)
    p.add_argument("--dataset", default="voc07", choices=sorted(DATASETS), help="sets the class names and size")
    p.add_argument("--classes", default=None, help="class-names file for a custom dataset")
    p.add_argument("--load_from", required=True)
    p.add_argument("--img_dir", required=True, nargs="+", help="image folders and/or image files")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--topk", type=int, default=None, help="list the K highest-scoring labels, whatever the threshold")
    p.add_argument("--output", default=None, help="write predictions to PATH.json or PATH.csv")
    p.add_argument("--heatmaps", default=None, metavar="OUT_DIR", help="write attention heatmaps here")
    p.add_argument("--heatmap_classes", default=None, help="comma-separated class names (default: predicted)")
    p.add_argument("--heatmap_head", type=int, default=0, help="which CSRA head's map to draw (0: T = 1)")
    p.add_argument("--batch_size", type=int, default=16, help="images per forward pass (the dataset's)")
    return p


def get_args(argv=None) -> argparse.Namespace:
    p = build_parser()
    args = parse_args(p, argv)
    if args.output and not args.output.endswith((".json", ".csv")):
        p.error("--output must end in .json or .csv")
    return args


def chosen_classes(args, names, scores) -> list:
    if args.heatmap_classes:
        return [names.index(n) for n in args.heatmap_classes.split(",")]
    above = [c for c in range(len(scores)) if scores[c] >= args.threshold]
    return above or [int(torch.tensor(scores).argmax())]


def run(args) -> list:
    runtime = resolve_runtime(du.init_distributed(), args.model, args.amp, not args.no_channels_last)
    model, _ = load_for_inference(args.load_from, **model_kwargs(args))
    model = runtime.prepare_model(model)
    names = args.class_names or [class_name(None, i) for i in range(args.num_cls)]
    if args.heatmap_classes:
        unknown = [n for n in args.heatmap_classes.split(",") if n not in names]
        if unknown:
            raise ConfigError(f"--heatmap_classes: unknown class {unknown[0]!r}; classes are {', '.join(names)}")
    if not 0 <= args.heatmap_head < max(1, model.num_heads):
        raise ConfigError(f"--heatmap_head must be below the number of heads ({max(1, model.num_heads)})")
    files, skipped = list_images(args.img_dir)
    for s in skipped:
        print(f"warning: skipped {s}: not an image file", file=sys.stderr)
    transform = ImageTransform(args.img_size, train=False)
    results = []
    for start in range(0, len(files), args.batch_size):
        batch_files, images, tensors = [], [], []
        for f in files[start:start + args.batch_size]:
            try:
                with Image.open(f) as im:
                    img = im.convert("RGB")
            except (OSError, ValueError) as e:
                print(f"warning: skipped {f}: unreadable image ({e})", file=sys.stderr)
                continue
            batch_files.append(f)
            images.append(img)
            tensors.append(transform(img))
        if not tensors:
            continue
        x = runtime.to_input(torch.stack(tensors))
        with torch.no_grad(), runtime.autocast():
            out = model.forward_with_maps(x)
        probs = torch.sigmoid(out["logits"].float()).cpu()
        for i, (f, img) in enumerate(zip(batch_files, images)):
            scores = probs[i].tolist()
            order = sorted(range(len(scores)), key=lambda c: -scores[c])
            shown = order[:args.topk] if args.topk else [c for c in order if scores[c] >= args.threshold]
            labels = [(names[c], scores[c]) for c in shown]
            print(f"{f}: " + (", ".join(f"{n} ({s:.3f})" for n, s in labels) or "(nothing above threshold)"))
            rec = {"image": f, "labels": [{"class": n, "score": round(s, 6)} for n, s in labels],
                   "scores": {n: round(s, 6) for n, s in zip(names, scores)}}
            if args.heatmaps:
                rec["heatmaps"] = save_heatmaps(args.heatmaps, f, img, out, i, chosen_classes(args, names, scores),
                                                names, scores, head=args.heatmap_head)
            results.append(rec)
    if args.output:
        write_output(args.output, results, names)
        print(f"wrote {args.output} ({len(results)} images)")
    if args.heatmaps:
        print(f"wrote heatmaps for {len(results)} images to {args.heatmaps}")
    return results


def write_output(path: str, results: list, names: list) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.endswith(".json"):
        with open(path, "w") as f:
            json.dump(results, f, indent=1)
        return
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "labels"] + names)
        for r in results:
            w.writerow([r["image"], ";".join(x["class"] for x in r["labels"])] + [r["scores"][n] for n in names])


def main(argv=None) -> None:
    run_main(lambda: run(get_args(argv)))


if __name__ == "__main__":
    main()
