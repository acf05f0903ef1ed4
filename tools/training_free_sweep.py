"""The training-free CSRA sweep (paper Table 1): a trained GAP-head checkpoint scored with
score = mean + lam * max of its linear layer applied at every location, for several lam.

    python tools/training_free_sweep.py --dataset voc07 --load_from BASELINE.pth [--lams 0,0.02,0.05,0.1,0.2,0.5]

The backbone runs once per image; every lam is scored from the same feature maps.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import utils.openmp_env  # noqa: F401,E402  (first: it configures OpenMP before torch loads it)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from engine import make_loader  # noqa: E402
from pipeline.dataset import MultiLabelDataset  # noqa: E402
from pipeline.errors import ConfigError  # noqa: E402
from pipeline.heads import get_head  # noqa: E402
from pipeline.model import load_for_inference  # noqa: E402
from pipeline.runtime import Runtime, resolve_runtime  # noqa: E402
from utils import distributed as du  # noqa: E402
from utils.progress import bar  # noqa: E402
from utils.cli import (add_data_args, add_model_args, add_record_flag, add_runtime_args, dataset_files,  # noqa: E402
                       dataset_kwargs, describe_inference, finish_class_names, model_kwargs, new_parser, parse_args,
                       run_main)
from utils.evaluation import evaluate  # noqa: E402


def sweep_scores(model, dataset, lams, runtime: Runtime, batch_size: int, num_workers: int):
    """Sigmoid scores (N, C) for each lam, from one backbone pass."""
    model.eval()
    parts = {lam: [] for lam in lams}
    loader = make_loader(dataset, batch_size, num_workers, list(range(len(dataset))), runtime.device)
    with torch.no_grad():
        for batch, _ in bar(loader, desc="sweep"):
            if batch is None:
                continue
            with runtime.autocast():
                features = model.forward_features(runtime.to_input(batch[0]))
            y_mean, y_max = model.head.spatial_mean_and_max(features)
            for lam in lams:
                parts[lam].append(torch.sigmoid(y_mean + lam * y_max).cpu().numpy())
    return {lam: np.concatenate(p) for lam, p in parts.items()}


def build_parser() -> argparse.ArgumentParser:
    p = new_parser(__doc__.splitlines()[0])
    add_model_args(p)
    add_data_args(p)
    add_runtime_args(p)
    p.add_argument("--load_from", required=True, help="a checkpoint trained with --head gap")
    add_record_flag(p)
    p.add_argument("--lams", default="0,0.02,0.05,0.1,0.2,0.5", help="comma-separated lam values")
    p.set_defaults(head="gap")
    return p


def run(argv=None) -> dict:
    args = parse_args(build_parser(), argv)
    kind = get_head(args.head)
    if not kind.training_free:
        source = f"its run record {args.record_path}" if args.record_path else f"--head {kind.name}"
        raise ConfigError(f"{args.load_from}: checkpoint has {kind.display} ({source}); the training-free sweep "
                          "needs a GAP head")
    try:
        lams = sorted({0.0} | {float(v) for v in args.lams.split(",") if v.strip()})
    except ValueError:
        raise ConfigError(f"--lams must be comma-separated numbers (got {args.lams!r})") from None
    if not all(math.isfinite(v) and v >= 0 for v in lams):
        raise ConfigError(f"--lams must be finite numbers >= 0 (got {args.lams!r})")
    _, test_json = dataset_files(args)
    dataset = MultiLabelDataset(test_json, **dataset_kwargs(args, train=False))
    args.num_cls = args.num_cls or dataset.num_classes
    finish_class_names(args, args.num_cls)
    runtime = resolve_runtime(du.init_distributed(), args.model, args.amp, not args.no_channels_last, args.normalize)
    model, _ = load_for_inference(args.load_from, **model_kwargs(args))
    print(describe_inference(args, runtime))
    scores = sweep_scores(runtime.prepare_model(model), dataset, lams, runtime, args.batch_size, args.num_workers)
    targets = dataset.targets()
    results = {lam: evaluate(s, targets) for lam, s in scores.items()}
    base = results[0.0].map
    print(f"\ntraining-free CSRA on {args.load_from} ({len(dataset)} images of {test_json})")
    print(f"{'lam':>8s}{'mAP':>9s}{'change':>9s}{'CF1':>8s}{'OF1':>8s}")
    for lam, rep in results.items():
        tag = "  (baseline GAP)" if lam == 0 else ""
        print(f"{lam:8.3f}{rep.map:9.2f}{rep.map - base:+9.2f}{rep.overall['CF1']:8.2f}{rep.overall['OF1']:8.2f}{tag}")
    return results


def main(argv=None) -> None:
    run_main(lambda: run(argv))


if __name__ == "__main__":
    main()
