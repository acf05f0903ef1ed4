"""Validate a checkpoint: the paper's metrics on a prepared test set.

    python val.py --num_heads 1 --lam 0.1 --dataset voc07 --num_cls 20 --load_from MODEL.pth
    python val.py --head gap --lam 0.02 --load_from BASELINE.pth        # training-free mean + lam * max
    python val.py --dataset voc12 --load_from MODEL.pth --voc_submission results/   # server files
"""
from __future__ import annotations

import argparse
import sys

from engine import predict
from pipeline.checkpoint import CheckpointError, load_model_weights
from pipeline.dataset import DataError, resolve_dataset_files
from utils import distributed as du
from utils.cli import add_data_args, add_model_args, build_dataset, build_model, fill_defaults, norm
from utils.evaluation import MetricsError, evaluate, format_report, report_to_dict
from utils.evaluation.report import save_scores, write_voc_submission


def get_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Validate a CSRA checkpoint.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--load_from", required=True, help="checkpoint: authors', model-zoo, DataParallel or ours")
    p.add_argument("--save_scores", default=None, metavar="PATH",
                   help="write per-image scores with their paths and the metrics as JSON")
    p.add_argument("--voc_submission", default=None, metavar="DIR",
                   help="write VOC evaluation-server files comp2_cls_test_<class>.txt into DIR")
    p.add_argument("--amp", default="off", choices=["bf16", "fp16", "off"], help="mixed precision on CUDA")
    p.add_argument("--test_aug", nargs="*", default=None, help="accepted for compatibility; ignored")
    return fill_defaults(p.parse_args(argv))


def validate(args) -> dict:
    device = du.init_distributed()
    _, test_json = resolve_dataset_files(args.dataset, None, args.test_json)
    writes_only = bool(args.voc_submission or args.save_scores)
    dataset = build_dataset(test_json, args, train=False, require_labels=not writes_only)
    model = build_model(args, pretrained="none")  # the checkpoint supplies every weight
    info = load_model_weights(model, args.load_from)
    model.set_lam(args.lam)
    model.to(device)
    mean, std = norm(args)
    amp = args.amp if device.type == "cuda" else "off"
    if du.is_main():
        heads = f"{info['num_heads']} heads, lam {args.lam}" if args.head == "csra" else \
            (f"training-free mean + {args.lam} * max" if args.lam else "plain GAP")
        print(f"{args.load_from}: {args.model}, {args.head} head ({heads}), {args.num_cls} classes; "
              f"{len(dataset)} images from {test_json} on {device.type}")
    scores, targets, paths = predict(model, dataset, batch_size=args.batch_size, num_workers=args.num_workers,
                                        device=device, mean=mean, std=std, amp=amp,
                                        channels_last=device.type == "cuda")
    result = {"scores": scores, "paths": paths}
    if du.is_main():
        names = args.class_names
        metrics = None
        if dataset.has_labels:
            report = evaluate(scores, targets, paths=paths)
            print(format_report(report, names))
            metrics = report_to_dict(report, names)
            result["report"] = report
        elif not writes_only:
            sys.exit(f"error: {test_json} has no labels; pass --voc_submission DIR or --save_scores PATH")
        if args.save_scores:
            save_scores(args.save_scores, paths, scores, targets, names, metrics)
            print(f"wrote {args.save_scores}")
        if args.voc_submission:
            files = write_voc_submission(args.voc_submission, paths, scores,
                                         names or [f"class_{i}" for i in range(scores.shape[1])])
            print(f"wrote {len(files)} submission files to {args.voc_submission}")
    du.cleanup()
    return result


def main(argv=None) -> None:
    args = get_args(argv)
    try:
        validate(args)
    except (DataError, CheckpointError, MetricsError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
