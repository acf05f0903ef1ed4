"""Predict labels for your own images, and optionally draw CSRA's attention heatmaps.

    python demo.py --load_from MODEL.pth --img_dir photos/                  # VOC classes by default
    python demo.py --dataset coco --num_heads 6 --lam 0.5 --load_from COCO.pth --img_dir a.jpg b.jpg \
        --topk 5 --output preds.csv --heatmaps heatmaps/
"""
from __future__ import annotations

import utils.process.openmp_env  # noqa: F401  (first: it configures OpenMP before torch loads it)

import argparse
import os
import sys

import torch

from engine import score_batches
from pipeline.data.dataset import ImageTransform
from pipeline.errors import ConfigError, DataError
from pipeline.images import read_rgb
from utils.configuration.cli import new_parser, parse_args, run_main
from utils.configuration.config import Config
from utils.output.predictions import (find_images, finish, label_record, prediction_line, probabilities,
                                      read_class_thresholds, thresholds_line)
from utils.output.visualize import ImageMaps, save_heatmaps
from utils.process.inference import open_session


def get_args(argv=None) -> argparse.Namespace:
    return parse_args(new_parser("Predict labels (and heatmaps) for images.", "D"), argv, usage_error=lambda a: None
                      if not a.output or a.output.endswith((".json", ".csv")) else "--output must end in .json or .csv")


def chosen_classes(args, names, scores, cut) -> list:
    if args.heatmap_classes:
        return [names.index(n) for n in args.heatmap_classes.split(",")]
    above = [c for c in range(len(scores)) if scores[c] >= cut[c]]
    return above or [int(torch.tensor(scores).argmax())]


class ImageFiles(torch.utils.data.Dataset):
    """The files to predict on, as uint8 tensors for the model (None for an unreadable file)."""

    def __init__(self, files, transform: ImageTransform):
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):
        try:
            return self.transform(read_rgb(self.files[i])), i, ""
        except DataError as e:
            return None, i, str(e)


def unique_stems(files) -> dict:
    """A file-name stem per image for its heatmaps; images of the same name in different folders get
    their folder's name in front (and a number if that is not enough), so none overwrites another."""
    stems, taken = {}, set()
    counts = {}
    for f in files:
        s = os.path.splitext(os.path.basename(f))[0]
        counts[s] = counts.get(s, 0) + 1
    for f in files:
        s = os.path.splitext(os.path.basename(f))[0]
        if counts[s] > 1:
            s = f"{os.path.basename(os.path.dirname(os.path.abspath(f)))}_{s}"
        stem, n = s, 1
        while stem in taken:
            n += 1
            stem = f"{s}_{n}"
        taken.add(stem)
        stems[f] = stem
    return stems


def collate_files(batch):
    kept = [b for b in batch if b[0] is not None]
    errors = [b[2] for b in batch if b[0] is None]
    images = torch.stack([b[0] for b in kept]) if kept else None
    return images, [b[1] for b in kept], errors


def run(args) -> list:
    files, skipped = find_images(args.img_dir)
    for path, why in skipped:
        print(f"warning: skipped {path}: {why}", file=sys.stderr)
    cfg = Config.from_args(args)
    session = open_session(cfg, args.load_from)
    model, runtime = session.model, session.runtime
    names = session.class_names
    if session.warning:
        print(session.warning, file=sys.stderr)
    print(session.header, file=sys.stderr)
    if args.heatmap_classes:
        unknown = [n for n in args.heatmap_classes.split(",") if n not in names]
        if unknown:
            raise ConfigError(f"--heatmap_classes: unknown class {unknown[0]!r}; classes are {', '.join(names)}")
    n_maps = len(model.head.temperatures)
    if not 0 <= args.heatmap_head < n_maps:
        raise ConfigError(f"--heatmap_head must be below the number of heads ({n_maps})")
    cut = read_class_thresholds(args.thresholds, names) if args.thresholds else [args.threshold] * len(names)
    print(thresholds_line(args.thresholds, cut), file=sys.stderr)
    stems = unique_stems(files)
    loader = torch.utils.data.DataLoader(ImageFiles(files, ImageTransform(cfg.model.img_size, train=False)),
                                         batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers,
                                         collate_fn=collate_files)
    results = []
    for (_, indices, errors), out in score_batches(loader, runtime, model.forward_with_maps):
        for e in errors:
            print(f"warning: skipped {e}", file=sys.stderr)
        if out is None:
            continue
        logits = out.logits.float().cpu().numpy()
        probs = probabilities(logits)
        for i, index in enumerate(indices):
            f = files[index]
            scores = probs[i].tolist()
            rec = label_record(f, names, scores, cut, args.topk, logits=logits[i].tolist())
            print(prediction_line(rec))
            if args.heatmaps:
                rec["heatmaps"] = save_heatmaps(args.heatmaps, stems[f], read_rgb(f),
                                                ImageMaps(out, i, args.heatmap_head),
                                                chosen_classes(args, names, scores, cut), names, scores)
            results.append(rec)
    finish(results, files, args.output, names)
    if args.heatmaps:
        print(f"wrote heatmaps for {len(results)} images to {args.heatmaps}")
    return results


def main(argv=None) -> None:
    run_main(lambda: run(get_args(argv)))


if __name__ == "__main__":
    main()
