"""The training-free CSRA sweep (paper Table 1): a trained GAP-head checkpoint scored with
score = mean + lam * max of its linear layer applied at every location, for several lam.

    python utils/training_free_sweep.py --dataset voc07 --load_from BASELINE.pth [--lams 0,0.02,0.05,0.1,0.2,0.5]

The backbone runs once per image; every lam is scored from the same feature maps.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from engine import make_loader  # noqa: E402
from pipeline.checkpoint import CheckpointError, load_model_weights  # noqa: E402
from pipeline.dataset import DataError, resolve_dataset_files, to_model_input  # noqa: E402
from utils.cli import add_data_args, add_model_args, build_dataset, build_model, fill_defaults, norm  # noqa: E402
from utils.evaluation import MetricsError, evaluate  # noqa: E402


def sweep_scores(model, dataset, lams, batch_size, num_workers, device, mean, std):
    """Sigmoid scores (N, C) for each lam, from one backbone pass."""
    model.eval()
    parts = {lam: [] for lam in lams}
    loader = make_loader(dataset, batch_size, num_workers, list(range(len(dataset))), device)
    with torch.no_grad():
        for batch, _ in tqdm(loader, desc="sweep", mininterval=1.0):
            if batch is None:
                continue
            x = to_model_input(batch[0], mean, std, device)
            y_mean, y_max = model.fc.mean_and_max(model.fc.score_maps(model.forward_features(x)).float())
            for lam in lams:
                parts[lam].append(torch.sigmoid(y_mean + lam * y_max).cpu().numpy())
    return {lam: np.concatenate(p) for lam, p in parts.items()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--load_from", required=True, help="a checkpoint trained with --head gap")
    p.add_argument("--lams", default="0,0.02,0.05,0.1,0.2,0.5", help="comma-separated lam values")
    args = p.parse_args(argv)
    args.head = "gap"
    try:
        lams = sorted({0.0} | {float(v) for v in args.lams.split(",") if v.strip()})
    except ValueError:
        p.error(f"--lams must be comma-separated numbers (got {args.lams!r})")
    fill_defaults(args)
    try:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        _, test_json = resolve_dataset_files(args.dataset, None, args.test_json)
        dataset = build_dataset(test_json, args, train=False)
        model = build_model(args, pretrained="none")
        load_model_weights(model, args.load_from)
        mean, std = norm(args)
        scores = sweep_scores(model.to(device), dataset, lams, args.batch_size, args.num_workers, device, mean, std)
        targets = dataset.targets()
        results = {lam: evaluate(s, targets) for lam, s in scores.items()}
    except (DataError, CheckpointError, MetricsError) as e:
        sys.exit(f"error: {e}")
    base = results[0.0].map
    print(f"\ntraining-free CSRA on {args.load_from} ({len(dataset)} images of {test_json})")
    print(f"{'lam':>8s}{'mAP':>9s}{'change':>9s}{'CF1':>8s}{'OF1':>8s}")
    for lam, rep in results.items():
        tag = "  (baseline GAP)" if lam == 0 else ""
        print(f"{lam:8.3f}{rep.map:9.2f}{rep.map - base:+9.2f}{rep.overall['CF1']:8.2f}{rep.overall['OF1']:8.2f}{tag}")


if __name__ == "__main__":
    main()
