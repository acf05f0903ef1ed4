"""Command-line options shared by the entry scripts, their defaults, and the one-line error wrapper.

Defaults live in five places, applied in this order, the user's flags last:
literal values on the ``add_argument`` lines; the dataset's row of ``pipeline.dataset.DATASETS``
(classes, input size, batch, decay period, normalisation, default backbone); for main.py the
``--recipe`` (``pipeline.recipes``), the dataset's changes to it and its other training overrides;
the backbone's row of ``pipeline.backbones.BACKBONES`` (ViTs dictate 224 px and batch 64); the run
record beside ``--load_from`` (``utils.run_record``: the model as it was trained).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import List, Optional, Sequence, Set, Tuple

from pipeline.backbones import BACKBONES, get_backbone
from pipeline.classes import load_class_names
from pipeline.dataset import CUSTOM, DATASETS, ImageTransform
from pipeline.errors import ConfigError
from pipeline.heads import HEAD_KINDS, get_head
from pipeline.recipes import RECIPES
from pipeline.runtime import AMP_CHOICES, NORMALIZE_HELP, default_normalize, normalization
from utils.run_record import RECORD_FILE, check_flags, find_record, read_record, record_defaults
from utils.entry import ScriptParser, run_main  # noqa: F401  (entry scripts import run_main from here)

AUG_CHOICES = ["randomflip", "resizedcrop", "resize"]
CLASS_FILES = ("classes.txt", "classes.json")  # a class-names file beside a prepared JSON


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows '(default: X)' only where there is a literal default; rules for the rest are in the help."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "%(default)" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def new_parser(description: str) -> argparse.ArgumentParser:
    """The parser of a script with the shared flags (``utils.entry.ScriptParser``: no abbreviations,
    one-line errors)."""
    return ScriptParser(description=description, formatter_class=HelpFormatter)


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default="resnet101",
                   help=f"backbone: {', '.join(BACKBONES)} (--dataset demo: small_cnn)")
    g.add_argument("--head", default="csra", choices=list(HEAD_KINDS),
                   help="csra, or gap: the baseline global-average-pooling + linear head (the head table: "
                        "pipeline/heads.py)")
    g.add_argument("--num_heads", type=int, default=1, help="CSRA heads: 1, 2, 4, 6 or 8")
    g.add_argument("--lam", type=float, default=None,
                   help="; ".join(f"{k.name}: {k.lam_help} (default {k.default_lam:g})"
                                  for k in HEAD_KINDS.values() if k.lam_help))
    g.add_argument("--num_cls", type=int, default=None,
                   help="number of classes (default: the --classes file's, else the dataset's, else the JSON's)")
    g.add_argument("--img_size", type=int, default=448, help="input size (the dataset's: 448 VOC/COCO/custom, "
                   "224 WIDER, 64 demo; ViTs 224)")
    g.add_argument("--normalize", default=None,
                   help=f"input normalisation of pixels in [0, 1]: {NORMALIZE_HELP} (default: the checkpoint's "
                        "record; else for the authors' backbones (ResNet-18..152, ViTs, small_cnn) their rule by "
                        "dataset: half for WIDER, unit for the others; for every other backbone its weights' own: "
                        "imagenet for torchvision's, the pretrained configuration's for timm's)")


def add_data_args(p: argparse.ArgumentParser, batch: bool = True, workers: bool = True) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="voc07", choices=sorted(DATASETS),
                   help="voc07, voc12, coco, wider, openimages, nuswide, demo (the built-in generated dataset), or "
                        "custom (your own files: the default when --train_json/--test_json are given without "
                        "--dataset)")
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


def add_runtime_args(p: argparse.ArgumentParser, inference: bool = True) -> None:
    """--amp and --no_channels_last. Inference (val, demo, the sweep) runs in float32 by default, as the
    published numbers were computed; training picks the fastest precision the machine computes."""
    g = p.add_argument_group("runtime")
    if inference:
        g.add_argument("--amp", default="off", choices=list(AMP_CHOICES),
                       help="precision: off = float32 (the published numbers' precision); bf16/fp16 opt into "
                            "autocast (faster on GPUs; scores move by up to a few 0.01); auto = bf16 where the "
                            "GPU or CPU computes it natively")
    else:
        g.add_argument("--amp", default="auto", choices=list(AMP_CHOICES),
                       help="training precision: auto = bf16 autocast where the GPU or CPU computes it natively "
                            "(AVX512-BF16/AMX), fp16 with loss scaling on older GPUs, else float32; off = float32")
    g.add_argument("--no_channels_last", action="store_true",
                   help="keep the NCHW memory format (channels-last is the default on every device)")
    g.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads for the model (default: the CPUs this process may use, less those other "
                        "processes keep busy; re-fitted while training; OMP_NUM_THREADS also fixes it)")


def plural(n: int, one: str, many: Optional[str] = None) -> str:
    """'1 head', '6 heads'."""
    return f"{n} {one if n == 1 else (many or one + 's')}"


def describe_model(args) -> str:
    """'resnet101, csra head (1 head, lam 0.1), 20 classes, 448 px'."""
    heads = get_head(args.head).describe(args.num_heads, args.lam)
    return f"{args.model}, {args.head} head ({heads}), {plural(args.num_cls, 'class', 'classes')}, {args.img_size} px"


def describe_inference(args, runtime=None, threads=None) -> str:
    """The header of a script that loads a checkpoint: what was loaded, from which description, how it runs."""
    source = f"described by its run record {args.record_path}" if getattr(args, "record_path", None) else \
        "described by flags"
    text = f"{args.load_from} ({source}): {describe_model(args)}"
    if runtime is not None:
        text += f"; {runtime.describe()}"
        if threads is not None:
            text += f", {threads.describe()}"
        if runtime.amp != "off":
            text += (f"; {runtime.amp} autocast opted in: scores differ slightly from float32, the published "
                     "numbers' precision")
    return text


def add_pretrained_arg(g, note: str = "") -> None:
    g.add_argument("--pretrained", default="imagenet", metavar="imagenet|none|PATH",
                   help="backbone weights: the provider's ImageNet weights (torchvision's, or timm's default for "
                        "timm/<name>), none, or a local .pth/.pt/.safetensors file in the provider's own layout "
                        "('module.' and state_dict/model wrappers accepted)" + note)


def add_record_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no_record", action="store_true",
                   help="ignore the run record (args.json) beside --load_from: describe the model by flags only")


def add_checkpoint_args(p: argparse.ArgumentParser) -> None:
    """The checkpoint and what describes it, for the scripts that read no dataset JSON (demo, export)."""
    p.add_argument("--dataset", default="voc07", choices=sorted(DATASETS),
                   help="sets the class names, size and normalisation of a checkpoint without a run record")
    p.add_argument("--classes", default=None, help="class-names file for a custom dataset")
    p.add_argument("--load_from", required=True,
                   help="checkpoint (trained here: the model options come from the run record beside it)")
    add_record_flag(p)


def typed_flags(argv: Sequence[str]) -> Set[str]:
    """The option names typed on the command line (``--lr 0.1`` and ``--lr=0.1`` both give 'lr');
    exact, because no parser accepts abbreviations."""
    return {a[2:].split("=", 1)[0] for a in argv if a.startswith("--")}


# record entries --config does not repeat: the run's identity and bookkeeping
NOT_REPEATED = {"config", "config_changes", "resume", "run_id", "runtime", "record_version", "resume_changes",
                "record_path", "record_names", "class_names"}


def read_config(path: str) -> dict:
    """--config: a run folder's record (its args.json, or the folder) whose options a new run repeats."""
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(path) and os.path.basename(path) != RECORD_FILE:
        raise ConfigError(f"--config {path}: name a run folder or its {RECORD_FILE}")
    if not os.path.isfile(os.path.join(folder, RECORD_FILE)):
        raise ConfigError(f"--config {path}: no {RECORD_FILE} there")
    record = read_record(folder)
    if record is None:
        raise ConfigError(f"--config {path}: not the record of a run of main.py")
    return record


def _pre_parse(argv: Sequence[str]) -> argparse.Namespace:
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for flag in ("--dataset", "--model", "--load_from", "--train_json", "--test_json", "--recipe", "--config"):
        pre.add_argument(flag, default=None)
    pre.add_argument("--no_record", action="store_true")
    known, _ = pre.parse_known_args(argv)
    return known


def parse_args(p: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None, train: bool = False) -> argparse.Namespace:
    """Parse with the defaults in force (also in --help): the checkpoint's run record (see
    utils.run_record), then the dataset's row, then the backbone's; then fill the options whose
    default depends on other options (--lam, --num_cls, class names)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    pre = _pre_parse(argv)
    typed = typed_flags(argv)
    known = {a.dest for a in p._actions}
    found = find_record(pre.load_from) if pre.load_from and "load_from" in known and not pre.no_record else None
    config = read_config(pre.config) if pre.config and "config" in known else None
    record = found[1] if found else (config or {})
    dataset = pre.dataset or record.get("dataset") or (CUSTOM if pre.train_json or pre.test_json else "voc07")
    spec = DATASETS.get(dataset)
    defaults = {}
    if spec is not None:
        defaults = dict(dataset=dataset, model=spec.model, img_size=spec.img_size, batch_size=spec.batch_size,
                        decay_every=spec.decay_every)
        if train:
            recipe = RECIPES.get(pre.recipe or record.get("recipe") or "paper")  # unknown: argparse reports it
            if recipe is not None:
                defaults.update(recipe.values)
                defaults.update(spec.recipe_overrides.get(recipe.name, {}))
            defaults.update(spec.train_overrides)
        try:
            backbone = get_backbone(pre.model or record.get("model") or spec.model)
        except ConfigError:
            backbone = None  # reported after parsing, with the other checks
        if backbone is not None and backbone.img_size:
            defaults.update(img_size=backbone.img_size, batch_size=backbone.batch_size)
    if found:
        defaults.update(record_defaults(record, typed))
    if config:  # a recorded run's every option, below the flags typed now
        defaults.update({k: v for k, v in config.items() if k not in NOT_REPEATED})
    p.set_defaults(**{k: v for k, v in defaults.items() if k in known})
    args = p.parse_args(argv)
    args.record_path, args.record_names = (found[0], record.get("class_names")) if found else (None, None)
    if config:
        args.record_names = config.get("class_names")
        args.config_changes = sorted(typed & known - {"config"})
    args = resolve(args)
    if found:
        check_flags(args, typed, found[0], record)
    return args


def _positive(v) -> bool:
    return v > 0


# flag -> (check, what it must be); a flag a script does not have is skipped
CHECKS = {
    "img_size": (_positive, "a positive integer"),
    "batch_size": (_positive, "a positive integer"),
    "num_cls": (_positive, "a positive integer"),
    "num_workers": (lambda v: v >= 0, "0 or more"),
    "threads": (_positive, "a positive integer"),
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
    "seed": (lambda v: 0 <= v < 2 ** 63, "an integer in [0, 2**63)"),
    "report_classes": (lambda v: v >= 0, "0 or more"),
    "gamma_pos": (lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"),
    "gamma_neg": (lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"),
    "asl_clip": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "cutout": (lambda v: 0 <= v <= 1, "a fraction of the image side in [0, 1]"),
    "onecycle_peak": (lambda v: 0 < v < 1, "a fraction of the steps in (0, 1)"),
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
    """Canonical model name, lam by head, normalisation by dataset, class names and their count;
    ConfigError when they disagree."""
    args.model = get_backbone(args.model).name
    if args.lam is None:
        args.lam = get_head(args.head).default_lam
    spec = DATASETS[args.dataset]
    if getattr(args, "normalize", "unit") is None:
        args.normalize = default_normalize(args.model, spec.normalize)
    elif hasattr(args, "normalize"):
        normalization(args.normalize)  # a bad value is one line here
    names, source = class_names_known_now(args)
    if args.num_cls is None and names is not None:
        args.num_cls = len(names)
    if names is not None and args.num_cls is not None and len(names) != args.num_cls:
        raise ConfigError(f"--num_cls is {args.num_cls} but the class names ({source}) list {len(names)} classes")
    args.class_names = names
    if args.num_cls is None and not _custom_json(args) and spec.classes:
        args.num_cls = spec.num_cls
    check_values(args)
    if args.num_cls is not None:
        finish_class_names(args, args.num_cls)
    return args


def _custom_json(args) -> Optional[str]:
    return getattr(args, "test_json", None) or getattr(args, "train_json", None)


def names_beside(json_path: str) -> Optional[Tuple[str, List[str]]]:
    """(path, names) of a class-names file beside a prepared JSON (the preparation scripts write one)."""
    folder = os.path.dirname(os.path.abspath(json_path))
    for name in CLASS_FILES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path, load_class_names(path)
    return None


def class_names_known_now(args) -> Tuple[Optional[List[str]], str]:
    """The first steps of the one rule for class names, every entry script: --classes; else the
    checkpoint's run record; else a class file beside the JSON; else the --dataset's names when the
    data are the dataset's own. (None, '') when only the label count can decide (finish_class_names)."""
    class_file = getattr(args, "classes", None)
    if class_file:
        return load_class_names(class_file), class_file
    if getattr(args, "record_names", None):
        return list(args.record_names), args.record_path
    spec = DATASETS[args.dataset]
    custom = _custom_json(args) or (None if spec.classes else spec.test_json or spec.train_json)
    if custom:
        found = names_beside(custom)
        if found:
            return found[1], found[0]
        return None, ""
    return (list(spec.classes), args.dataset) if spec.classes else (None, "")


def finish_class_names(args, num_cls: int) -> List[str]:
    """The last steps of the rule, once the label count is known: the --dataset's names when their
    number matches, else class_<i> with a one-line warning."""
    if args.class_names is None:
        spec = DATASETS[args.dataset]
        if spec.classes and len(spec.classes) == num_cls:
            args.class_names = list(spec.classes)
        else:
            args.class_names = [f"class_{i}" for i in range(num_cls)]
            print(f"warning: no class names for these {num_cls} classes (pass --classes FILE, or put "
                  f"{CLASS_FILES[0]} beside the JSON); calling them class_0 ... class_{num_cls - 1}", file=sys.stderr)
    return args.class_names


def model_kwargs(args: argparse.Namespace) -> dict:
    """The model options as keyword arguments of ``CSRANet`` / ``load_for_inference``."""
    return dict(model_name=args.model, num_classes=args.num_cls, head=args.head, num_heads=args.num_heads,
                lam=args.lam, img_size=args.img_size)


def dataset_kwargs(args: argparse.Namespace, train: bool) -> dict:
    """The data options as keyword arguments of ``MultiLabelDataset`` (the transform included)."""
    transform = ImageTransform(args.img_size, train=train, crop=DATASETS[args.dataset].crop,
                               randaugment=getattr(args, "randaugment", False), cutout=getattr(args, "cutout", 0.0))
    return dict(transform=transform, num_classes=args.num_cls, data_root=args.data_root,
                skip_bad_images=args.skip_bad_images, cache_images=getattr(args, "cache_images", False),
                fast_decode=True if train else getattr(args, "fast_decode", False))


def dataset_files(args: argparse.Namespace):
    """(train JSON, test JSON): the flags', else the dataset's."""
    spec = DATASETS[args.dataset]
    train_json = getattr(args, "train_json", None) or spec.train_json
    test_json = getattr(args, "test_json", None) or spec.test_json
    needed = ("train_json", "test_json") if hasattr(args, "train_json") else ("test_json",)
    missing = [f"--{k}" for k, v in zip(("train_json", "test_json"), (train_json, test_json)) if k in needed and not v]
    if missing:
        raise ConfigError(f"--dataset {args.dataset}: name your prepared files with {' and '.join(missing)}")
    return train_json, test_json
