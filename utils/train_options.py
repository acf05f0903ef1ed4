"""main.py's options: the training flags beside the shared ones (``utils.cli``), and the flags typed on
the command line as --resume compares them."""
from __future__ import annotations

import argparse
import sys

from pipeline.dataset import DATASETS
from pipeline.errors import ConfigError
from pipeline.losses import LOSSES, resolved_options
from pipeline.optim import OPTIMIZERS, SCHEDULE_HELP, SCHEDULERS
from pipeline.pretrained import check_source
from pipeline.recipes import APPLIES_TO, PAPER, RECIPES, describe_options, show_option
from pipeline.runtime import AMP_CHOICES
from utils.cli import (AUG_CHOICES, add_data_args, add_model_args, add_pretrained_arg, add_runtime_args, new_parser,
                       parse_args, typed_flags)


def recipes_help() -> str:
    text = "; ".join(f"{r.name} ({r.description}): {describe_options(r.values)}" for r in RECIPES.values())
    for name, spec in DATASETS.items():
        if spec.recipe_overrides:
            text += f". --dataset {name} changes them: " + "; ".join(
                f"{recipe}: " + ", ".join(show_option(k, v) for k, v in changes.items())
                for recipe, changes in spec.recipe_overrides.items())
    return text


def ema_decay(text: str):
    """--ema DECAY, or none to turn a recipe's EMA off (0 is not 'off': a decay must be in (0, 1), which
    utils.cli.CHECKS says in one line)."""
    if text.lower() in ("none", "off"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a decay such as 0.9997, or none (got {text!r})") from None


# flags that turn an option off: typed, they count as the option they negate (for --resume's checks)
NEGATIONS = {"no_randaugment": "randaugment", "decay_norm_bias": "no_decay_norm_bias"}


def given_flags(argv) -> set:
    return {NEGATIONS.get(f, f) for f in typed_flags(argv)}


def build_parser() -> argparse.ArgumentParser:
    p = new_parser("Train CSRA.")
    add_model_args(p)
    add_data_args(p)
    add_runtime_args(p, inference=False)
    p.add_argument("--eval_amp", default="off", choices=list(AMP_CHOICES),
                   help="precision of the per-epoch evaluation: off = float32, as the published numbers (and "
                        "val.py by default); bf16/fp16 opt into autocast there too")
    g = p.add_argument_group("training (the paper's recipe by default)")
    g.add_argument("--train_json", default=None, help="train on this prepared JSON instead of the dataset's")
    g.add_argument("--cutmix", default=None, help="local ResNet-101 file (CutMix ImageNet) to start from")
    add_pretrained_arg(g, "; its classifier is dropped (--dataset demo: none)")
    add_recipe_args(g)
    add_run_args(p.add_argument_group("the run"))
    return p


def add_recipe_args(g) -> None:
    """The options a --recipe presets (their literal defaults are the paper recipe's)."""
    g.add_argument("--recipe", default="paper", choices=list(RECIPES),
                   help="a preset of the training options below; any of them typed wins. " + recipes_help())
    g.add_argument("--optimizer", default=PAPER["optimizer"], choices=list(OPTIMIZERS),
                   help="sgd (with --momentum) or adamw (betas 0.9, 0.999)")
    g.add_argument("--scheduler", default=PAPER["scheduler"], choices=list(SCHEDULERS),
                   help="; ".join(f"{k}: {v}" for k, v in SCHEDULE_HELP.items()))
    g.add_argument("--lr", type=float, default=PAPER["lr"], help="backbone learning rate (the peak with onecycle; "
                   "--dataset demo: 0.05, with --recipe strong 0.002); the CSRA head uses --head_lr_mult times it")
    g.add_argument("--head_lr_mult", type=float, default=PAPER["head_lr_mult"],
                   help="head LR multiplier for heads that take one (CSRA; the GAP baseline: always 1; --recipe "
                        "strong: 1)")
    g.add_argument("--loss", default=PAPER["loss"], choices=list(LOSSES),
                   help="; ".join(f"{k.name}: {k.description}" for k in LOSSES.values()))
    g.add_argument("--gamma_pos", type=float, default=None,
                   help="focusing exponent on positives (the loss's default: " +
                        ", ".join(f"{k.name} {k.defaults['gamma_pos']:g}" for k in LOSSES.values()) + ")")
    g.add_argument("--gamma_neg", type=float, default=None,
                   help="focusing exponent on negatives (" +
                        ", ".join(f"{k.name} {k.defaults['gamma_neg']:g}" for k in LOSSES.values()) + ")")
    g.add_argument("--asl_clip", type=float, default=None,
                   help="ASL probability shift of negatives (asl 0.05; the others 0)")
    g.add_argument("--partial_labels", action="store_true",
                   help="a -1 in the training JSON means unknown: left out of the loss and its normalisation "
                        "(without the flag a -1 there is an error)")
    g.add_argument("--momentum", type=float, default=PAPER["momentum"], help="SGD momentum (--optimizer sgd)")
    g.add_argument("--w_d", type=float, default=PAPER["w_d"], help="weight decay")
    g.add_argument("--no_decay_norm_bias", action="store_true", default=PAPER["no_decay_norm_bias"],
                   help="no weight decay on biases and normalisation weights (--recipe strong: on)")
    g.add_argument("--decay_norm_bias", dest="no_decay_norm_bias", action="store_false",
                   help="weight decay on every parameter (turns --no_decay_norm_bias off)")
    g.add_argument("--warmup_epoch", type=float, default=PAPER["warmup_epoch"],
                   help="linear warm-up epochs, --scheduler step (--dataset demo: 1)")
    g.add_argument("--onecycle_peak", type=float, default=PAPER["onecycle_peak"],
                   help="--scheduler onecycle: the fraction of the steps at which the LR peaks")
    g.add_argument("--total_epoch", type=int, default=PAPER["total_epoch"],
                   help="epochs (--recipe strong: 40; --dataset demo: 10)")
    g.add_argument("--decay_every", type=int, default=4, help="x0.1 every N epochs, --scheduler step (the "
                   "dataset's: 4 VOC/custom/demo, 5 COCO/WIDER)")
    g.add_argument("--randaugment", action="store_true", default=PAPER["randaugment"],
                   help="torchvision's RandAugment (2 ops, magnitude 9) on the 8-bit training image (--recipe "
                        "strong: on)")
    g.add_argument("--no_randaugment", dest="randaugment", action="store_false", help="turn --randaugment off")
    g.add_argument("--cutout", type=float, default=PAPER["cutout"], metavar="FRACTION",
                   help="Cutout of one square this fraction of the image side, random colour, on the 8-bit "
                        "training image; 0: none (--recipe strong: 0.5)")
    g.add_argument("--ema", type=ema_decay, default=PAPER["ema"], metavar="DECAY",
                   help="also keep an EMA of the weights, evaluated beside the model; none: no EMA (--recipe "
                        "strong: 0.9997; with --dataset demo 0.99)")


def add_run_args(g) -> None:
    """How the run goes: progress, seed, evaluation and state periods, folder, resume, logs."""
    g.add_argument("--print_freq", type=int, default=100,
                   help="show loss, LR and speed every N iterations, and at least 4 times an epoch (the bar on a "
                        "terminal, a plain line in a log file)")
    g.add_argument("--train_aug", nargs="+", choices=AUG_CHOICES, default=None,
                   help="ignored: accepted so the authors' scripts run; the recipe's augmentation is used")
    g.add_argument("--test_aug", nargs="*", default=None, help="ignored: accepted so the authors' scripts run")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the training model (pays on long runs only: compiling took 61 s for "
                        "small_cnn and 153 s for ResNet-18 on a 2-core CPU; see benchmarks/bench_train.py --compile)")
    g.add_argument("--eval_every", type=int, default=1, help="evaluate every N epochs (and always the last)")
    g.add_argument("--state_every", type=int, default=500,
                   help="also save the training state every N iterations (0: only at epoch ends)")
    g.add_argument("--output_dir", default=None, help="run folder (default checkpoint/<model>)")
    g.add_argument("--report", default=None, metavar="DIR",
                   help="after the last evaluation, write the HTML evaluation report into DIR (see val.py --report)")
    g.add_argument("--config", default=None, metavar="RUN",
                   help="start a new run with a recorded run's options (its folder or args.json); flags typed now "
                        "win and the header lists them")
    g.add_argument("--resume", nargs="?", const="auto", default=None, metavar="PATH",
                   help="continue an interrupted run: its folder or train_state.pth (default: --output_dir)")
    g.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard scalars (loss, LR, mAP, CF1, OF1, img/s) into the run folder's "
                        "tensorboard/ (needs: pip install tensorboard)")


def get_args(argv=None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(build_parser(), argv, train=True)
    check_source(args.pretrained)
    if args.cutmix:
        check_source(args.cutmix, "--cutmix")
    typed = given_flags(argv)
    if args.config and args.resume:
        raise ConfigError("--config starts a new run from a recorded one; --resume continues a run: use one")
    for flag, (option, choice) in APPLIES_TO.items():
        if flag in typed and getattr(args, option) != choice:
            raise ConfigError(f"--{flag} applies to --{option} {choice}, but this run uses --{option} "
                              f"{getattr(args, option)} (--recipe {args.recipe})")
    # the loss's own defaults for its options left unset: args.json records every value in force
    args.gamma_pos, args.gamma_neg, args.asl_clip = resolved_options(args.loss, args.gamma_pos, args.gamma_neg,
                                                                    args.asl_clip)
    return args
