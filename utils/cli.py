"""Command-line options shared by main.py, val.py, demo.py and the tools, and what they build."""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from pipeline.classes import load_class_names
from pipeline.dataset import DATASETS, ImageTransform, MultiLabelDataset
from pipeline.model import MODEL_NAMES, CSRANet, canonical_model_name, normalization_for

AUG_CHOICES = ["randomflip", "resizedcrop", "resize"]


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, help=f"backbone: {', '.join(MODEL_NAMES)} (default resnet101; "
                   "small_cnn for --dataset demo)")
    g.add_argument("--head", default="csra", choices=["csra", "gap"],
                   help="csra (default) or gap: the baseline global-average-pooling + linear head")
    g.add_argument("--num_heads", type=int, default=1, help="CSRA heads: 1, 2, 4, 6 or 8")
    g.add_argument("--lam", type=float, default=None,
                   help="CSRA residual weight lambda (default 0.1); with --head gap at evaluation, the "
                        "training-free mean + lam * max rule (default 0: plain GAP)")
    g.add_argument("--num_cls", type=int, default=None, help="number of classes (default: the dataset's)")
    g.add_argument("--img_size", type=int, default=None, help="input size (default 448; 224 WIDER; 64 demo)")


def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="voc07", choices=sorted(DATASETS),
                   help="voc07, voc12, coco, wider, or demo (the built-in generated dataset)")
    g.add_argument("--test_json", default=None, help="evaluate this prepared JSON instead of the dataset's")
    g.add_argument("--classes", default=None, help="class-names file (.txt one per line, or .json list)")
    g.add_argument("--data_root", default=None,
                   help="re-root every img_path: replace the folder part before the dataset's own layout")
    g.add_argument("--skip_bad_images", action="store_true",
                   help="skip missing/corrupt images with a counted warning (default: stop with an error)")
    g.add_argument("--batch_size", type=int, default=None, help="default 16 (64 for WIDER/ViT, 32 demo)")
    g.add_argument("--num_workers", type=int, default=min(8, os.cpu_count() or 1), help="data-loading workers")


def fill_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill options the user left unset from the dataset's defaults, and check --num_cls."""
    spec = DATASETS[args.dataset]
    demo = args.dataset == "demo"
    if args.model is None:
        args.model = "small_cnn" if demo else "resnet101"
    try:
        args.model = canonical_model_name(args.model)
    except ValueError as e:
        sys.exit(f"error: {e}")
    vit = args.model.startswith("vit")
    if args.img_size is None:
        args.img_size = 224 if vit else spec["img_size"]
    if args.batch_size is None:
        args.batch_size = 64 if vit else spec["batch_size"]
    if args.lam is None:
        args.lam = 0.0 if args.head == "gap" else 0.1
    class_file = getattr(args, "classes", None)
    names: Optional[List[str]] = None
    if class_file:
        try:
            names = load_class_names(class_file)
        except (OSError, ValueError) as e:
            sys.exit(f"error: --classes {e}")
    custom_files = getattr(args, "test_json", None) or getattr(args, "train_json", None)
    if names is None and not custom_files:
        names = list(spec["classes"])
    if args.num_cls is None:
        args.num_cls = len(names) if names is not None else spec["num_cls"]
        if names is None and custom_files:
            args.num_cls = None  # taken from the JSON's first record
    if names is not None and args.num_cls is not None and len(names) != args.num_cls:
        sys.exit(f"error: --num_cls is {args.num_cls} but the class names "
                 f"({class_file or args.dataset}) list {len(names)} classes")
    args.class_names = names
    return args


def build_model(args: argparse.Namespace, pretrained: str = "none", cutmix: Optional[str] = None) -> CSRANet:
    try:
        return CSRANet(args.model, args.num_cls, head=args.head, num_heads=args.num_heads, lam=args.lam,
                       img_size=args.img_size, pretrained=pretrained, cutmix=cutmix)
    except ValueError as e:
        sys.exit(f"error: {e}")


def test_transform(args) -> ImageTransform:
    return ImageTransform(args.img_size, train=False)


def train_transform(args) -> ImageTransform:
    return ImageTransform(args.img_size, train=True, crop=args.dataset != "wider")


def build_dataset(json_path: str, args, train: bool, require_labels: bool = True) -> MultiLabelDataset:
    ds = MultiLabelDataset(json_path, train_transform(args) if train else test_transform(args),
                           num_classes=args.num_cls, data_root=args.data_root,
                           skip_bad_images=args.skip_bad_images, require_labels=require_labels)
    if args.num_cls is None:
        args.num_cls = ds.num_classes
    return ds


def norm(args):
    return normalization_for(args.model)
