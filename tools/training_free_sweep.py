"""The training-free CSRA sweep (paper Table 1): score = mean + lam * max of a classifier applied at
every location of the feature map, for several lam, from one backbone pass per image.

    python tools/training_free_sweep.py --dataset voc07 --load_from BASELINE.pth [--lams 0,0.02,0.05,0.1,0.2,0.5]
    python tools/training_free_sweep.py --model mobilenet_v2 --pretrained imagenet --img_dir ILSVRC2012/val

With ``--load_from``: a checkpoint trained here with ``--head gap`` (any backbone), scored by mAP on a
multi-label test set. With ``--img_dir``: any torchvision or timm ImageNet classifier as it is, its own
classifier applied at every location, on single-label folders in the ImageNet validation layout,
scored by top-1 and top-5 accuracy. Where the classifier is not a linear layer on average-pooled
features (a ViT's class token, ConvNeXt's norm after pooling), "mean" is the model's own logits.
"""
from __future__ import annotations

import argparse
import math
import sys

import utils.process.openmp_env  # noqa: F401  (first: it configures OpenMP before torch loads it)

import numpy as np
import torch

from engine import loader_images, make_loader, score_batches
from pipeline.data.dataset import MultiLabelDataset
from pipeline.data.imagefolder import ImageFolderSet
from pipeline.errors import ConfigError
from pipeline.models.backbones import Backbone, get_backbone
from pipeline.models.heads import get_head
from pipeline.models.runtime import Runtime, normalization_name, resolve_runtime
from pipeline.weights.pretrained import classifier_outputs, create_model, imagenet_view
from utils.configuration.cli import (dataset_files, dataset_kwargs, new_parser, parse_args, run_main, typed_flags,
                                     with_label_count)
from utils.configuration.config import Config
from utils.evaluation import evaluate
from utils.output.progress import bar
from utils.process import distributed as du
from utils.process.inference import open_session
from utils.process.threads import ThreadGovernor


def paper_lam(spec: Backbone) -> float:
    """The paper's fixed lam (Table 1): 0.02 for the ResNet family, 0.2 for every other model."""
    return 0.02 if spec.family == "resnet" else 0.2


def sweep_scores(model, dataset, lams, runtime: Runtime, batch_size: int, num_workers: int):
    """Sigmoid scores (N, C) for each lam, from one backbone pass."""
    model.eval()
    parts = {lam: [] for lam in lams}
    loader = make_loader(dataset, batch_size, num_workers, list(range(len(dataset))), runtime.device)
    for _, features in score_batches(bar(loader, desc="sweep"), runtime, model.forward_features,
                                     images=loader_images):
        if features is None:
            continue
        with torch.no_grad():
            y_mean, y_max = model.head.spatial_mean_and_max(features)
        for lam in lams:
            parts[lam].append(torch.sigmoid(y_mean + lam * y_max).cpu().numpy())
    return {lam: np.concatenate(p) for lam, p in parts.items()}


def classifier_hits(model, spec: Backbone, dataset, lams, runtime: Runtime, batch_size: int, num_workers: int):
    """{lam: (top-1 hits, top-5 hits)} of the model's own logits + lam * the max over locations of its
    classifier applied at each location, from one pass."""
    hits = {lam: [0, 0] for lam in lams}
    checked = False
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    for (_, labels), (own, local) in score_batches(bar(loader, desc="sweep"), runtime,
                                                   lambda x: spec.classify(model, x)):
        own, peak = own.float().cpu(), local.float().amax(dim=2).cpu()
        if not checked:  # (a classifier the backbone table does not name: its outputs known at the first batch)
            dataset.check_outputs(own.shape[1], spec.name)
            checked = True
        k = min(5, own.shape[1])
        for lam in lams:
            top = (own + lam * peak).topk(k, dim=1).indices
            hits[lam][0] += int((top[:, 0] == labels).sum())
            hits[lam][1] += int((top == labels[:, None]).any(dim=1).sum())
    return hits


def build_parser() -> argparse.ArgumentParser:
    return new_parser(__doc__.splitlines()[0], "S")


def parse_lams(text: str, fixed: float):
    try:
        lams = sorted({0.0, fixed} | {float(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise ConfigError(f"--lams must be comma-separated numbers (got {text!r})") from None
    if not all(math.isfinite(v) and v >= 0 for v in lams):
        raise ConfigError(f"--lams must be finite numbers >= 0 (got {text!r})")
    return lams


def print_table(title: str, columns, rows: dict, fixed: float) -> None:
    """One line per lam: the plain model (lam 0), the paper's fixed lam and the rest of the sweep."""
    print(f"\n{title}")
    print(f"{'lam':>8s}" + "".join(f"{c:>9s}" for c in columns[:1]) + f"{'change':>9s}" +
          "".join(f"{c:>9s}" for c in columns[1:]))
    base = rows[0.0][0]
    for lam, values in rows.items():
        tag = "  (plain model)" if lam == 0 else ("  (the paper's fixed lam)" if lam == fixed else "")
        print(f"{lam:8.3f}{values[0]:9.2f}{values[0] - base:+9.2f}" + "".join(f"{v:9.2f}" for v in values[1:]) + tag)


def checkpoint_sweep(args) -> dict:
    cfg = Config.from_args(args)
    kind = get_head(cfg.model.head)
    if not kind.training_free:
        source = f"its run record {cfg.record_path}" if cfg.record_path else f"--head {kind.name}"
        raise ConfigError(f"{args.load_from}: checkpoint has {kind.display} ({source}); the training-free sweep "
                          "needs a GAP head")
    fixed = paper_lam(get_backbone(cfg.model.model))
    lams = parse_lams(args.lams, fixed)
    _, test_json = dataset_files(cfg)
    dataset = MultiLabelDataset(test_json, **dataset_kwargs(cfg, train=False))
    cfg = with_label_count(cfg, cfg.model.num_cls or dataset.num_classes, counted_in=test_json)
    session = open_session(cfg, args.load_from)
    for line in (session.warning, session.header):
        if line:
            print(line)
    scores = sweep_scores(session.model, dataset, lams, session.runtime, cfg.data.batch_size,
                          cfg.data.num_workers)
    targets = dataset.targets()
    results = {lam: evaluate(s, targets) for lam, s in scores.items()}
    print_table(f"training-free CSRA on {args.load_from} ({len(dataset)} images of {test_json})",
                ("mAP", "CF1", "OF1"),
                {lam: (r.map, r.overall["CF1"], r.overall["OF1"]) for lam, r in results.items()}, fixed)
    return results


def classifier_sweep(args, typed) -> dict:
    cfg = Config.from_args(args)
    spec = get_backbone(cfg.model.model)
    if spec.classify is None:
        raise ConfigError(f"--model {spec.name} has no ImageNet classifier to score")
    size, normalisation = imagenet_view(spec)
    size = cfg.model.img_size if "img_size" in typed else size
    normalize = cfg.model.normalize if "normalize" in typed else normalization_name(normalisation)
    fixed = paper_lam(spec)
    lams = parse_lams(args.lams, fixed)
    dataset = ImageFolderSet(args.img_dir, size, args.class_index)
    runtime = resolve_runtime(du.init_distributed(), spec.name, cfg.runtime.amp, not cfg.runtime.no_channels_last,
                              normalize)
    threads = ThreadGovernor(cfg.runtime.threads).choice
    pretrained = cfg.training.pretrained
    model = create_model(spec, size, pretrained, keep_classifier=True).eval()
    outputs = classifier_outputs(model, spec)
    if outputs is not None:
        dataset.check_outputs(outputs, spec.name)
    model = runtime.prepare_model(model)
    print(f"{spec.name} ({spec.display}) with --pretrained {pretrained}, its own classifier; {size} px (shorter "
          f"side {int(size / 0.875)}, centre crop); {runtime.describe()}, {threads.describe()}; {len(dataset)} images in "
          f"{len(dataset.folders)} class folders of {args.img_dir}")
    if not args.class_index:
        print(f"note: the {len(dataset.folders)} sorted folder names are outputs 0..{len(dataset.folders) - 1} (as "
              "torchvision's ImageFolder numbers them); pass --class_index FILE if they are other outputs")
    hits = classifier_hits(model, spec, dataset, lams, runtime, cfg.data.batch_size, cfg.data.num_workers)
    results = {lam: (100.0 * h1 / len(dataset), 100.0 * h5 / len(dataset)) for lam, (h1, h5) in hits.items()}
    print_table(f"training-free CSRA on {spec.name}'s ImageNet classifier ({len(dataset)} images of {args.img_dir})",
                ("top-1", "top-5"), results, fixed)
    return results


def run(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(build_parser(), argv)
    typed = typed_flags(argv)
    if bool(args.load_from) == bool(args.img_dir):
        raise ConfigError("pass either --load_from (a GAP-head checkpoint, scored by mAP) or --img_dir (an ImageNet "
                          "classifier on single-label folders, scored by accuracy)")
    if args.load_from:
        for flag in ("pretrained", "class_index"):
            if flag in typed:
                raise ConfigError(f"--{flag} applies to --img_dir; a --load_from checkpoint holds its own weights")
        return checkpoint_sweep(args)
    return classifier_sweep(args, typed)


def main(argv=None) -> None:
    run_main(lambda: run(argv))


if __name__ == "__main__":
    main()
