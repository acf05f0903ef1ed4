"""Validate a checkpoint: the paper's metrics on a prepared test set.

    python val.py --num_heads 1 --lam 0.1 --dataset voc07 --num_cls 20 --load_from MODEL.pth
    python val.py --head gap --lam 0.02 --load_from BASELINE.pth        # training-free mean + lam * max
    python val.py --dataset voc12 --load_from MODEL.pth --voc_submission results/   # server files
"""
from __future__ import annotations

import utils.process.openmp_env  # noqa: F401  (first: it configures OpenMP before torch loads it)

import argparse
import os
from typing import Optional

import numpy as np

from engine import predict, thumbnails_by_row
from pipeline.data.dataset import MultiLabelDataset, read_json
from pipeline.errors import ConfigError, DataError
from utils.configuration.cli import (dataset_files, dataset_kwargs, describe_model, new_parser, parse_args, run_main,
                                     with_label_count)
from utils.configuration.config import Config
from utils.evaluation import evaluate, format_report, report_to_dict
from utils.evaluation.html_report import ScoredImages, report_targets, write_report
from utils.evaluation.report import (global_sweep, load_scores_binary, save_scores, threshold_advice,
                                     write_voc_submission)
from utils.process import distributed as du
from utils.process.inference import open_session


def usage_error(a: argparse.Namespace) -> Optional[str]:
    if not (a.load_from or a.from_scores):
        return "--load_from is required (or --from_scores)"
    if a.save_scores and (os.path.isdir(a.save_scores) or a.save_scores.endswith(("/", os.sep))):
        return f"--save_scores {a.save_scores}: a folder; name the file to write (e.g. scores.json or scores.npy)"
    return None


def get_args(argv=None) -> argparse.Namespace:
    return parse_args(new_parser("Validate a CSRA checkpoint.", "V"), argv, usage_error=usage_error)


def report_from_scores(args) -> dict:
    """Metrics (and with --report the report) from a --save_scores file: no model, no images decoded for
    scores. A binary file (.npy) is memory-mapped, not copied."""
    if args.from_scores.endswith(".npy"):
        scores, targets, paths, names = load_scores_binary(args.from_scores)
    else:
        data = read_json(args.from_scores)
        try:
            names, images = data["classes"], data["images"]
            scores = np.array([im["scores"] for im in images], dtype=np.float64)
            targets = np.array([im["target"] for im in images], dtype=np.int64)
            paths = [im["img_path"] for im in images]
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{args.from_scores}: not a --save_scores file with targets ({type(e).__name__}: {e})") \
                from None
    report = evaluate(scores, targets, paths=paths, pr_convention=args.pr_convention)
    print(format_report(report, names))
    result = {"report": report}
    if args.report:
        out = write_report(args.report, ScoredImages(scores, report_targets(targets), paths, names), report,
                           report_classes=args.report_classes, info={"scores": args.from_scores},
                           pr_convention=args.pr_convention)
        print(f"wrote {out['index']} ({out['seconds_total']:.1f} s)")
        result["html"] = out
    return result


def validate(args) -> dict:
    if args.from_scores:
        return report_from_scores(args)
    cfg = Config.from_args(args)
    _, test_json = dataset_files(cfg)
    writes_only = bool(args.voc_submission or args.save_scores)
    dataset = MultiLabelDataset(test_json, **dataset_kwargs(cfg, train=False), require_labels=not writes_only)
    num_cls = cfg.model.num_cls or dataset.num_classes
    if num_cls is None:
        raise ConfigError(f"{test_json} has no labels to count the classes from: pass --classes FILE or --num_cls N "
                          "(or --load_from a checkpoint with its run record)")
    cfg = with_label_count(cfg, num_cls, counted_in=test_json)
    session = open_session(cfg, args.load_from)
    model, runtime = session.model, session.runtime
    if du.is_main():
        if session.warning:
            print(session.warning)
        print(f"{session.header}; {len(dataset)} images from {test_json}")
    got = predict(model, dataset, runtime, batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers)
    scores, targets, paths, indices = got.scores, got.targets, got.paths, got.indices
    result = {"scores": scores, "paths": paths}
    if du.is_main():
        names = session.class_names
        metrics = None
        if dataset.has_labels:
            report = evaluate(scores, targets, paths=paths, pr_convention=args.pr_convention)
            print(format_report(report, names))
            sweep = global_sweep(scores, targets, args.pr_convention)
            if sweep is not None:
                print(threshold_advice(sweep, os.path.normpath(os.path.join(args.report, "thresholds.json"))
                                       if args.report else
                                       "add --report DIR, which writes DIR/thresholds.json"))
            metrics = report_to_dict(report, names)
            result["report"] = report
            if args.report:
                out = write_report(
                    args.report, ScoredImages(scores, report_targets(targets), paths, names), report,
                    report_classes=args.report_classes,
                    pr_convention=args.pr_convention, sweep=sweep,
                    info={"model": describe_model(cfg.model),
                          "checkpoint": args.load_from, "data": test_json},
                    thumbnails=lambda req: thumbnails_by_row(model, dataset, runtime, indices, req))
                print(f"wrote {out['index']}")
                result["html"] = out
        elif not writes_only:
            raise DataError(f"{test_json} has no labels; pass --voc_submission DIR or --save_scores PATH")
        if args.save_scores:
            print(f"wrote {', '.join(save_scores(args.save_scores, paths, scores, targets, names, metrics))}")
        if args.voc_submission:
            files = write_voc_submission(args.voc_submission, paths, scores, names)
            print(f"wrote {len(files)} submission files to {args.voc_submission}")
    du.cleanup()
    return result


def main(argv=None) -> None:
    run_main(lambda: validate(get_args(argv)))


if __name__ == "__main__":
    main()
