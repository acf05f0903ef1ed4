"""Command-line options shared by the entry scripts, their defaults, and the one-line error wrapper.

Defaults live in three places, applied in this order, the user's flags last:
literal values on the ``add_argument`` lines; the dataset's row of ``pipeline.dataset.DATASETS``
(classes, input size, batch, decay period, default backbone and, for main.py, its training
overrides); the backbone's row of ``pipeline.backbones.BACKBONES`` (ViTs dictate 224 px and batch 64).
"""
from __future__ import annotations

import argparse
import math
import os
from typing import List, Optional

from pipeline.backbones import BACKBONES, get_backbone
from pipeline.classes import load_class_names
from pipeline.dataset import DATASETS, ImageTransform
from pipeline.errors import ConfigError
from pipeline.runtime import AMP_CHOICES
from utils.entry import run_main  # noqa: F401  (entry scripts import it from here)

AUG_CHOICES = ["randomflip", "resizedcrop", "resize"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows '(default: X)' only where there is a literal default; rules for the rest are in the help."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "%(default)" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def new_parser(description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default="resnet101",
                   help=f"backbone: {', '.join(BACKBONES)} (--dataset demo: small_cnn)")
    g.add_argument("--head", default="csra", choices=["csra", "gap"],
                   help="csra, or gap: the baseline global-average-pooling + linear head")
    g.add_argument("--num_heads", type=int, default=1, help="CSRA heads: 1, 2, 4, 6 or 8")
    g.add_argument("--lam", type=float, default=None,
                   help="CSRA residual weight lambda (default 0.1); with --head gap at evaluation, the "
                        "training-free mean + lam * max rule (default 0: plain GAP)")
    g.add_argument("--num_cls", type=int, default=None,
                   help="number of classes (default: the --classes file's, else the dataset's, else the JSON's)")
    g.add_argument("--img_size", type=int, default=448, help="input size (the dataset's: 448 VOC/COCO, "
                   "224 WIDER, 64 demo; ViTs 224)")


def add_data_args(p: argparse.ArgumentParser, batch: bool = True, workers: bool = True) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="voc07", choices=sorted(DATASETS),
                   help="voc07, voc12, coco, wider, or demo (the built-in generated dataset)")
    g.add_argument("--test_json", default=None, help="evaluate this prepared JSON instead of the dataset's")
    g.add_argument("--classes", default=None, help="class-names file (.txt one per line, or .json list)")
    g.add_argument("--data_root", default=None,
                   help="re-root every img_path: replace the folder part before the dataset's own layout")
    g.add_argument("--skip_bad_images", action="store_true",
                   help="skip missing/corrupt images with a counted warning (default: stop with an error)")
    if batch:
        g.add_argument("--batch_size", type=int, default=16,
                       help="batch per process (the dataset's: 16 VOC/COCO, 64 WIDER, 32 demo; ViTs 64)")
    if workers:
        g.add_argument("--num_workers", type=int, default=min(8, os.cpu_count() or 1),
                       help="data-loading worker processes (--dataset demo: 0)")
    g.add_argument("--fast_decode", action="store_true",
                   help="also at evaluation, decode JPEGs much larger than --img_size at a reduced scale (faster; "
                        "pixels differ slightly from a full decode; training always does this)")
    g.add_argument("--cache_images", action="store_true",
                   help="decode each image once and keep it in memory (small datasets, with --num_workers 0; "
                        "--dataset demo: on)")


def add_runtime_args(p: argparse.ArgumentParser, amp_default: str = "auto") -> None:
    g = p.add_argument_group("runtime")
    g.add_argument("--amp", default=amp_default, choices=list(AMP_CHOICES),
                   help="mixed precision: auto = bf16 on CUDA (fp16 where bf16 is unsupported), off on CPU")
    g.add_argument("--no_channels_last", action="store_true", help="CUDA: keep the NCHW memory format")


def _pre_parse(argv: Optional[List[str]]) -> argparse.Namespace:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--dataset", default="voc07")
    pre.add_argument("--model", default=None)
    known, _ = pre.parse_known_args(argv)
    return known


def parse_args(p: argparse.ArgumentParser, argv: Optional[List[str]] = None, train: bool = False) -> argparse.Namespace:
    """Parse with the dataset's and backbone's defaults in force (also in --help), then fill the
    options whose default depends on other options (--lam, --num_cls, class names)."""
    pre = _pre_parse(argv)
    spec = DATASETS.get(pre.dataset)
    if spec is not None:
        defaults = dict(model=spec.model, img_size=spec.img_size, batch_size=spec.batch_size,
                        decay_every=spec.decay_every)
        if train:
            defaults.update(spec.train_overrides)
        try:
            backbone = get_backbone(pre.model or spec.model)
        except ConfigError:
            backbone = None  # reported after parsing, with the other checks
        if backbone is not None and backbone.img_size:
            defaults.update(img_size=backbone.img_size, batch_size=backbone.batch_size)
        known = {a.dest for a in p._actions}
        p.set_defaults(**{k: v for k, v in defaults.items() if k in known})
    return resolve(p.parse_args(argv))


def _positive(v) -> bool:
    return v > 0


# flag -> (check, what it must be); a flag a script does not have is skipped
CHECKS = {
    "img_size": (_positive, "a positive integer"),
    "batch_size": (_positive, "a positive integer"),
    "num_cls": (_positive, "a positive integer"),
    "num_workers": (lambda v: v >= 0, "0 or more"),
    "total_epoch": (_positive, "a positive integer"),
    "eval_every": (_positive, "a positive integer"),
    "state_every": (lambda v: v >= 0, "0 or more"),
    "print_freq": (_positive, "a positive integer"),
    "decay_every": (_positive, "a positive integer"),
    "warmup_epoch": (lambda v: math.isfinite(v) and v >= 0, "a number >= 0"),
    "lr": (lambda v: math.isfinite(v) and v > 0, "a positive number"),
    "head_lr_mult": (lambda v: math.isfinite(v) and v > 0, "a positive number"),
    "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "w_d": (lambda v: math.isfinite(v) and v >= 0, "a number >= 0"),
    "ema": (lambda v: 0 < v < 1, "in (0, 1), e.g. 0.9997"),
    "lam": (lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"),
    "threshold": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "topk": (_positive, "a positive integer"),
    "heatmap_head": (lambda v: v >= 0, "0 or more"),
}


def check_values(args: argparse.Namespace) -> None:
    """One line for the first flag whose value cannot work."""
    for flag, (ok, what) in CHECKS.items():
        value = getattr(args, flag, None)
        if value is not None and not ok(value):
            raise ConfigError(f"--{flag} must be {what} (got {value})")
    topk, num_cls = getattr(args, "topk", None), getattr(args, "num_cls", None)
    if topk is not None and num_cls is not None and topk > num_cls:
        raise ConfigError(f"--topk is {topk} but there are only {num_cls} classes")


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Canonical model name, lam by head, class names and their count; ConfigError when they disagree."""
    args.model = get_backbone(args.model).name
    if args.lam is None:
        args.lam = 0.0 if args.head == "gap" else 0.1
    spec = DATASETS[args.dataset]
    class_file = getattr(args, "classes", None)
    names: Optional[List[str]] = load_class_names(class_file) if class_file else None
    custom_files = getattr(args, "test_json", None) or getattr(args, "train_json", None)
    if names is None and not custom_files:
        names = list(spec.classes)
    if args.num_cls is None and names is not None:
        args.num_cls = len(names)
    elif args.num_cls is None and not custom_files:
        args.num_cls = spec.num_cls  # else taken from the JSON's first record
    if names is not None and args.num_cls is not None and len(names) != args.num_cls:
        raise ConfigError(f"--num_cls is {args.num_cls} but the class names "
                          f"({class_file or args.dataset}) list {len(names)} classes")
    args.class_names = names
    check_values(args)
    return args


def model_kwargs(args: argparse.Namespace) -> dict:
    """The model options as keyword arguments of ``CSRANet`` / ``load_for_inference``."""
    return dict(model_name=args.model, num_classes=args.num_cls, head=args.head, num_heads=args.num_heads,
                lam=args.lam, img_size=args.img_size)


def dataset_kwargs(args: argparse.Namespace, train: bool) -> dict:
    """The data options as keyword arguments of ``MultiLabelDataset`` (the transform included)."""
    transform = ImageTransform(args.img_size, train=train, crop=DATASETS[args.dataset].crop)
    return dict(transform=transform, num_classes=args.num_cls, data_root=args.data_root,
                skip_bad_images=args.skip_bad_images, cache_images=getattr(args, "cache_images", False),
                fast_decode=True if train else getattr(args, "fast_decode", False))


def dataset_files(args: argparse.Namespace):
    """(train JSON, test JSON): the flags', else the dataset's."""
    spec = DATASETS[args.dataset]
    return getattr(args, "train_json", None) or spec.train_json, getattr(args, "test_json", None) or spec.test_json
