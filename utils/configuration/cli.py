"""Parsing the entry scripts' command lines: the defaults in force, the values' checks and the options
that follow from others (the options themselves are the table in ``utils.configuration.options``).

A value comes from the first of these, read from the last: the flag typed now; for main.py --resume, the
resumed run's record (``utils.runs.resume``: what defines the run and what may change on resume); the record
given to main.py's ``--config`` (every option but a run's bookkeeping, ``NOT_REPEATED``), or for the other scripts
the run record beside ``--load_from`` (``utils.runs.run_record``: the model as it was trained); the head's
default (``--lam``, when the table leaves it unset); the backbone's row of ``pipeline.models.backbones.BACKBONES``
(ViTs dictate 224 px and batch 64); for main.py the ``--recipe`` (``pipeline.training.recipes``), the dataset's
changes to it and its other training overrides; the dataset's row of ``pipeline.data.dataset.DATASETS``
(classes, input size, batch, decay period, normalisation, default backbone); the literal value in the option
table. ``parse_args`` applies them in that order, bottom first, in one place; tests/test_sources.py shows each
overriding the one below.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Callable, Optional, Sequence, Set, Tuple

from pipeline.data.dataset import CUSTOM, DATASETS, ImageReading, ImageTransform
from pipeline.data.labels import expected_count
from pipeline.errors import ConfigError
from pipeline.models.backbones import get_backbone
from pipeline.models.heads import get_head
from pipeline.models.runtime import default_normalize, normalization
from pipeline.training.recipes import RECIPES
from utils.configuration.class_names import (check_class_order, class_names_known_now, config_class_names,
                                             custom_json, default_class_names, finish_class_names)
from utils.configuration.config import Config, ModelConfig
from utils.configuration.entry import ScriptParser, run_main  # noqa: F401  (entry scripts import run_main from here)
from utils.configuration.options import (BY_NAME, CHECKS, DATA_OPTIONS, HOLDS_WITH, MODEL_OPTIONS, NOT_REPEATED_OPTIONS,
                                         OPTIONS, PRE_PARSED, add_options, complete)
from utils.runs.resume import resume_defaults
from utils.runs.run_record import (BOOKKEEPING, RECORD_FILE, check_flags, check_record_values, find_record,
                                   read_record, record_defaults)
from predict_onnx import DefaultsHelpFormatter as HelpFormatter  # '(default: X)' where a default is literal



def new_parser(description: str, script: Optional[str] = None) -> argparse.ArgumentParser:
    """The parser of a script (``utils.configuration.entry.ScriptParser``: no abbreviations, one-line errors), with the
    options the table gives ``script`` (a letter of ``utils.configuration.options.SCRIPTS``)."""
    p = ScriptParser(description=description, formatter_class=HelpFormatter)
    if script is not None:
        add_options(p, script)
    return p


def plural(n: int, one: str, many: Optional[str] = None) -> str:
    """'1 head', '6 heads'."""
    return f"{n} {one if n == 1 else (many or one + 's')}"


def describe_model(model: ModelConfig) -> str:
    """'resnet101, csra head (1 head, lam 0.1), 20 classes, 448 px'."""
    heads = get_head(model.head).describe(model.num_heads, model.lam)
    return (f"{model.model}, {model.head} head ({heads}), {plural(model.num_cls, 'class', 'classes')}, "
            f"{model.img_size} px")


def describe_inference(cfg: Config, load_from: str, runtime=None, threads=None) -> str:
    """The header of a script that loads a checkpoint: what was loaded, from which description, how it runs."""
    source = f"described by its run record {cfg.record_path}" if cfg.record_path else "described by flags"
    text = f"{load_from} ({source}): {describe_model(cfg.model)}"
    if runtime is not None:
        text += f"; {runtime.describe()}"
        if threads is not None:
            text += f", {threads.describe()}"
        if runtime.amp != "off":
            text += (f"; {runtime.amp} autocast opted in: scores differ slightly from float32, the published "
                     "numbers' precision")
    return text


def typed_flags(argv: Sequence[str]) -> Set[str]:
    """The option names typed on the command line (``--lr 0.1`` and ``--lr=0.1`` both give 'lr');
    exact, because no parser accepts abbreviations."""
    return {a[2:].split("=", 1)[0] for a in argv if a.startswith("--")}


# record entries --config does not repeat: the run's bookkeeping, and the options whose row says so
NOT_REPEATED = set(BOOKKEEPING) | set(NOT_REPEATED_OPTIONS)


def read_config(path: str) -> dict:
    """--config: a run folder's record (its args.json, or the folder) whose options a new run repeats. Every
    key is an option of the table (its value checked as the table says) or the run's bookkeeping
    (NOT_REPEATED): a key this code does not know stops, rather than being dropped without a word."""
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(path) and os.path.basename(path) != RECORD_FILE:
        raise ConfigError(f"--config {path}: name a run folder or its {RECORD_FILE}")
    if not os.path.isfile(os.path.join(folder, RECORD_FILE)):
        raise ConfigError(f"--config {path}: no {RECORD_FILE} there")
    record = read_record(folder)
    if record is None:
        raise ConfigError(f"--config {path}: not the record of a run of main.py")
    options = {o.dest for o in OPTIONS}
    unknown = [k for k in record if k not in options and k not in NOT_REPEATED]
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise ConfigError(f"--config {path}: \"{unknown[0]}\"{more} is not an option of this code: the record is from "
                          "another version; start the run with flags instead")
    check_record_values(record, [k for k in record if k not in NOT_REPEATED], f"--config {path}")
    return record


def blame_record(error: ConfigError, typed: Set[str], config_path: Optional[str],
                 config: Optional[dict]) -> ConfigError:
    """``error``, saying so when the option it names came from the record given to --config (not typed)."""
    named = re.search(r"--(\w+)", str(error))
    key = named.group(1) if named else None
    if config is None or key is None or key in typed or key not in config or key in NOT_REPEATED:
        return error
    return type(error)(f"{error} (--{key} came from the record given to --config {config_path})")


def pre_parse(argv: Sequence[str]) -> argparse.Namespace:
    """The options that decide other options' defaults (``PRE_PARSED`` in the table), read first."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    for name in PRE_PARSED:
        kwargs = BY_NAME[name].kwargs
        if kwargs.get("action") == "store_true":
            pre.add_argument(f"--{name}", action="store_true")
        else:
            pre.add_argument(f"--{name}", default=None, **{k: kwargs[k] for k in ("nargs", "const") if k in kwargs})
    try:
        known, _ = pre.parse_known_args(argv)
    except argparse.ArgumentError:  # e.g. --output_dir without its value: the script's parser says so, in one line
        known = pre.parse_known_args([])[0]
    return known


def dataset_in_force(pre: argparse.Namespace, record: dict) -> str:
    """--dataset typed, else the record's, else a custom one when a JSON is named, else voc07."""
    return pre.dataset or record.get("dataset") or (CUSTOM if pre.train_json or pre.test_json else "voc07")


def parse_args(p: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None, train: bool = False,
               usage_error: Optional[Callable[[argparse.Namespace], Optional[str]]] = None,
               resumed: Optional[dict] = None) -> argparse.Namespace:
    """Parse with the defaults in force (also in --help), in the order of this module's docstring;
    ``resumed``: the record of the run main.py --resume continues (utils.runs.resume). Then fill the options
    whose default depends on other options (--lam, --num_cls, class names)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    pre = pre_parse(argv)
    typed = typed_flags(argv)
    known = {a.dest for a in p._actions}
    found = find_record(pre.load_from) if pre.load_from and "load_from" in known and not pre.no_record else None
    if found:
        check_record_values(found[1], MODEL_OPTIONS + DATA_OPTIONS, found[0])
    config = read_config(pre.config) if pre.config and "config" in known else None
    record = found[1] if found else (config or resumed or {})
    dataset = dataset_in_force(pre, record)
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
    if resumed:  # the resumed run's options (--config and --resume exclude each other)
        defaults.update(resume_defaults(resumed))
    p.set_defaults(**{k: v for k, v in defaults.items() if k in known})
    args = complete(p.parse_args(argv))
    if usage_error is not None and usage_error(args):  # a script's own rule between its flags
        p.error(usage_error(args))
    args.record_path, args.record_names = (found[0], record.get("class_names")) if found else (None, None)
    args.config_changes = sorted(typed & known - {"config"}) if config else None
    if config:
        config_class_names(args, typed, config)
        for key, other in HOLDS_WITH.items():  # e.g. lam means something else for another head: its default
            if key not in typed and getattr(args, other) != config.get(other):
                setattr(args, key, BY_NAME[key].kwargs.get("default"))
    args.num_cls_from = recorded_count_origin(args.num_cls, typed, pre.config, config, found)
    try:
        args = resolve(args)
    except ConfigError as e:
        raise blame_record(e, typed, pre.config, config) from None
    if found:
        check_flags(args, typed, found[0], record)
        check_class_order(args, found[0], record.get("class_names"))
    return args


def recorded_count_origin(num_cls: Optional[int], typed: Set[str], config_path: Optional[str],
                          config: Optional[dict], found: Optional[Tuple[str, dict]]) -> Optional[str]:
    """Where a --num_cls that no flag typed comes from, when a record gave it (for messages)."""
    if num_cls is None or "num_cls" in typed:
        return None
    if config is not None and config.get("num_cls") == num_cls:
        return f"the record given to --config ({config_path}) says --num_cls {num_cls}"
    if found and found[1].get("num_cls") == num_cls:
        return f"the checkpoint's run record {found[0]} says {num_cls} classes"
    return None


def check_values(args: argparse.Namespace) -> None:
    """One line for the first flag whose value cannot work."""
    for flag, (ok, what) in CHECKS.items():
        value = getattr(args, flag)
        if value is not None and not ok(value):
            raise ConfigError(f"--{flag} must be {what} (got {value})")
    topk, num_cls = args.topk, args.num_cls
    if topk is not None and num_cls is not None and topk > num_cls:
        raise ConfigError(f"--topk is {topk} but there are only {num_cls} classes")


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Canonical model name, lam by head, normalisation by dataset, class names and their count;
    ConfigError when they disagree."""
    args.model = get_backbone(args.model).name
    if args.lam is None:
        args.lam = get_head(args.head).default_lam
    spec = DATASETS[args.dataset]
    if args.normalize is None:
        args.normalize = default_normalize(args.model, spec.normalize)
    else:
        normalization(args.normalize)  # a bad value is one line here
    names, source = class_names_known_now(args)
    if args.num_cls is None and names is not None:
        args.num_cls = len(names)
        args.num_cls_from = f"{'--dataset ' if source == args.dataset else ''}{source} lists {len(names)} class names"
    if names is not None and args.num_cls is not None and len(names) != args.num_cls:
        raise ConfigError(f"{expected_count(args.num_cls, args.num_cls_from)} but the class names ({source}) list "
                          f"{len(names)} classes")
    args.class_names = names
    if args.num_cls is None and not custom_json(args) and spec.classes:
        args.num_cls = spec.num_cls
        args.num_cls_from = f"--dataset {args.dataset} has {spec.num_cls} classes"
    check_values(args)
    if args.num_cls is not None:
        finish_class_names(args, args.num_cls)
    return args


def with_label_count(cfg: Config, num_cls: int, partial_labels: Optional[bool] = None,
                     counted_in: Optional[str] = None) -> Config:
    """``cfg`` once the data have given the label count: the class names follow from it where no rule
    named them before. Where no option gave the count, the file read first gave it: ``counted_in``
    (default: the training file, which the trainer reads first), named in later messages."""
    names = cfg.class_names or default_class_names(cfg.data.dataset, num_cls)
    origin = None
    if cfg.model.num_cls is None:
        counted_in = counted_in or cfg.training.train_json or DATASETS[cfg.data.dataset].train_json
        origin = f"{counted_in} has {num_cls} classes" if counted_in else None
    return cfg.with_data(num_cls, names, cfg.training.partial_labels if partial_labels is None else partial_labels,
                         origin)


def model_kwargs(model: ModelConfig) -> dict:
    """The model options as keyword arguments of ``CSRANet`` / ``load_for_inference``: the head's own ones
    (its kind lists them) by name."""
    own = {k: getattr(model, k) for k in get_head(model.head).options}
    return dict(model_name=model.model, num_classes=model.num_cls, head=model.head, lam=model.lam,
                img_size=model.img_size, **own)


def dataset_kwargs(cfg: Config, train: bool) -> dict:
    """The data options as keyword arguments of ``MultiLabelDataset`` (the transform included)."""
    data = cfg.data
    transform = ImageTransform(cfg.model.img_size, train=train, crop=DATASETS[data.dataset].crop,
                               randaugment=cfg.training.randaugment, cutout=cfg.training.cutout)
    reading = ImageReading(skip_bad=data.skip_bad_images, cache=data.cache_images,
                           fast_decode=True if train else data.fast_decode)
    return dict(transform=transform, num_classes=cfg.model.num_cls, data_root=data.data_root, reading=reading,
                num_classes_from=cfg.num_cls_from)


def dataset_files(cfg: Config, train: bool = False) -> Tuple[Optional[str], str]:
    """(train file, test file): the flags', else the dataset's; both needed for training, the test file
    otherwise."""
    spec = DATASETS[cfg.data.dataset]
    train_json = cfg.training.train_json or spec.train_json
    test_json = cfg.data.test_json or spec.test_json
    needed = ("train_json", "test_json") if train else ("test_json",)
    missing = [f"--{k}" for k, v in zip(("train_json", "test_json"), (train_json, test_json)) if k in needed and not v]
    if missing:
        raise ConfigError(f"--dataset {cfg.data.dataset}: name your prepared files with {' and '.join(missing)}")
    return train_json, test_json
