"""main.py's command line: its parser (from the option table, ``utils.configuration.options``), the checks that involve
several options, and the flags typed as --resume compares them."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from pipeline.data.dataset_table import DATASETS
from pipeline.errors import ConfigError, CSRAError
from pipeline.models.backbones import get_backbone
from pipeline.training.losses import loss_parameters, resolved_options
from pipeline.training.optim import check_schedule
from pipeline.weights.pretrained import check_source
from utils.configuration.cli import dataset_in_force, new_parser, parse_args, pre_parse, typed_flags
from utils.configuration.options import APPLIES_TO, NEGATIONS
from utils.experiments.tracking import resolve_uri
from utils.runs.resume import ResumePlan, find_resumed_run, settle

CONFIG_AND_RESUME = "--config starts a new run from a recorded one; --resume continues a run: use one"


def given_flags(argv) -> set:
    """The options typed on the command line, a negating flag counted as the option it negates (for --resume)."""
    return {NEGATIONS.get(f, f) for f in typed_flags(argv)}


def _origin(args: argparse.Namespace, typed: set, key: str) -> str:
    """' (--recipe paper's)': where an untyped value came from, for a message that names it."""
    if key in typed:
        return ""
    if args.resume:
        return " (the resumed run's record)"
    if args.config:
        return f" (from --config {args.config})"
    by_dataset = key in DATASETS[args.dataset].recipe_overrides.get(args.recipe, {})
    return f" (--recipe {args.recipe}'s" + (f" on --dataset {args.dataset})" if by_dataset else ")")


def check_new_run(args: argparse.Namespace, typed: set) -> None:
    """What a new run starts from: its weight files exist, and its schedule can train, from its options alone
    (before the data are read: the steps per epoch come with them; trainer.build checks the rest). A resumed
    run needs neither: its weights are in its training state, and its record's schedule trained already."""
    check_source(args.pretrained)
    if args.cutmix:
        check_source(args.cutmix, "--cutmix")
    if args.init_from and not os.path.isfile(args.init_from):
        raise ConfigError(f"--init_from {args.init_from}: no such file")
    check_schedule(args.scheduler, args.total_epoch, args.warmup_epoch, origin=_origin(args, typed, "warmup_epoch"))


def build_parser() -> argparse.ArgumentParser:
    return new_parser("Train CSRA.", "T")


def resumed_run(argv) -> Optional[ResumePlan]:
    """The run --resume continues, found from the flags that name it before the others are parsed (its
    record is a source of defaults); None without --resume."""
    pre = pre_parse(argv)
    if not pre.resume:
        return None
    if pre.config:
        raise ConfigError(CONFIG_AND_RESUME)
    spec = DATASETS.get(dataset_in_force(pre, {}))
    if spec is None:
        return None  # an unknown --dataset: the parser names it
    by_model = pre.resume == "auto" and not pre.output_dir  # only then is the folder checkpoint/<model>
    return find_resumed_run(pre.resume, pre.output_dir, get_backbone(pre.model or spec.model).name if by_model
                            else None)


def get_args(argv=None) -> argparse.Namespace:
    """main.py's options, resolved once: the sources of utils.configuration.cli (a resumed run's record
    among them), the checks between options, and with --resume the flags typed against the record
    (``args.resume_plan``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        plan = resumed_run(argv)
    except CSRAError:
        build_parser().parse_args(argv)  # a flag the parser refuses is the first thing to mend
        raise
    args = parse_args(build_parser(), argv, train=True, resumed=plan.record if plan else None)
    typed = given_flags(argv)
    check_combinations(args, typed)
    if not plan:
        check_new_run(args, typed)
    if args.mlflow:
        args.mlflow = resolve_uri(args.mlflow)  # recorded as the store it is, wherever the run resumes
    # the loss's own defaults for its options left unset: args.json records every value in force
    given = {k: getattr(args, k) for k in loss_parameters()}
    for key, value in resolved_options(args.loss, given).items():
        setattr(args, key, value)
    args.resume_plan = settle(plan, args, typed) if plan else None
    return args


def check_combinations(args: argparse.Namespace, typed: set) -> None:
    """One line for options that do not go together, or an option whose partner is missing (--config with
    --resume is refused before parsing, by resumed_run)."""
    if args.val_json and args.val_split is not None:
        raise ConfigError("--val_json names a validation file; --val_split draws one from the training records: "
                          "use one")
    if args.test_every_epoch and not args.val_json and args.val_split is None:
        raise ConfigError("--test_every_epoch applies with a validation set (--val_split F or --val_json FILE): "
                          "without one the test set is scored every epoch anyway")
    if args.val_json and not os.path.isfile(args.val_json):
        raise ConfigError(f"--val_json {args.val_json}: no such file")
    if args.init_from:
        clash = [f"--{k}" for k in ("pretrained", "cutmix") if k in typed]
        if clash:
            raise ConfigError(f"--init_from supplies the backbone's weights; drop {' and '.join(clash)}")
    elif args.init_classes or args.class_map:
        raise ConfigError(f"--{'init_classes' if args.init_classes else 'class_map'} applies to --init_from")
    if args.mlflow_parent and not args.mlflow:
        raise ConfigError("--mlflow_parent applies to --mlflow")
    for flag, (option, choices) in APPLIES_TO.items():
        if flag in typed and getattr(args, option) not in choices:
            raise ConfigError(f"--{flag} applies to --{option} {' or '.join(choices)}, but this run uses --{option} "
                              f"{getattr(args, option)}{_origin(args, typed, option)}")
