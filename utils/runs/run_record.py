"""The record a run trained here keeps beside its checkpoints: the run folder's ``args.json``.

Every script that loads a checkpoint (val.py, demo.py, export.py, the sweep, the converter) reads
the record of the checkpoint's folder, so ``--load_from checkpoint/<run>/best.pth`` alone rebuilds
the model as it was trained: backbone, head, heads, lam, classes and their names, input size and
normalisation. A flag typed with another value than the record's stops with both named
(``--no_record`` ignores the record). The checkpoints themselves stay plain state dicts in the
authors' layout, which their code loads; a file without a record beside it (the authors', the
toolbox's, a copy moved elsewhere) is described by flags, as before.
"""
from __future__ import annotations

import json
import os
import typing
from typing import Iterable, Optional, Set, Tuple

from pipeline.data.dataset import DATASETS
from pipeline.errors import ConfigError
from pipeline.jsonfile import read_json
from pipeline.models.backbones import get_backbone
from pipeline.models.heads import HEAD_KINDS
from pipeline.models.runtime import legacy_normalize
from utils.configuration.config import field_type
from utils.configuration.options import BY_NAME, CHECKS, DATA_OPTIONS, MODEL_OPTIONS, OPTIONS, Option

RECORD_FILE = "args.json"
# what a record holds besides the options: the run's identity and what it found or was told
BOOKKEEPING = ("config_changes", "run_id", "runtime", "record_version", "resume_changes", "record_path",
               "record_names", "class_names", "selection", "init")
REQUIRED = ("model", "head", "num_heads", "num_cls", "img_size")  # without these it is not a record of main.py


RECORD_VERSION = 2  # 1: before normalisation was recorded; 2: normalize recorded


def migrate(record: dict) -> dict:
    """A record in the current schema: an older record gains what it lacks, as its run had it
    (version 1: the normalisation those runs used, the backbone's own convention)."""
    if record.get("record_version", 1) < 2 or not record.get("normalize"):
        record = dict(record, normalize=record.get("normalize") or legacy_normalize(record["model"]))
    return dict(record, record_version=RECORD_VERSION)


def check_version(record: dict, path: str) -> None:
    """A record this code can read: no version (the first records) or 1..RECORD_VERSION; a newer one was
    written by newer code, whose schema this code would misread and re-record as its own."""
    version = record.get("record_version", 1)
    if type(version) is not int or version < 1:
        raise ConfigError(f"{path}: record_version {json.dumps(version)} is not a version of this code's run records")
    if version > RECORD_VERSION:
        raise ConfigError(f"{path}: record_version {version} was written by a newer version of this code (this one "
                          f"reads up to {RECORD_VERSION}); use that version, or update this one")


def read_record(folder: str) -> Optional[dict]:
    """The one reader of a run folder's record (migrated), or None when the folder holds none of main.py's
    (no args.json, or some other program's); a record of a newer version stops with one line."""
    path = os.path.join(folder, RECORD_FILE)
    if not os.path.isfile(path):
        return None
    record = read_json(path)
    if not isinstance(record, dict) or any(record.get(k) is None for k in REQUIRED):
        return None  # some other program's args.json: not ours to interpret
    check_version(record, path)
    return migrate(record)


# --- recorded values against the option table ---------------------------------------------------------
TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _row(key: str) -> Optional[Option]:
    """The option row a record key is the value of (a negating flag shares its option's key)."""
    return BY_NAME.get(key) or next((o for o in OPTIONS if o.dest == key), None)


def _fits(kind, value) -> bool:
    """Whether a JSON value is of an option's Python type (``utils.configuration.config.field_type``)."""
    if typing.get_origin(kind) is typing.Union:  # Optional[X]
        return value is None or any(_fits(k, value) for k in typing.get_args(kind) if k is not type(None))
    if typing.get_origin(kind) is tuple:  # nargs: a JSON list of strings
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind) if kind in TYPE_NAMES else True


def _type_name(kind) -> str:
    if typing.get_origin(kind) is typing.Union:
        inner = next(k for k in typing.get_args(kind) if k is not type(None))
        return f"{_type_name(inner)} or null"
    return "a list of strings" if typing.get_origin(kind) is tuple else TYPE_NAMES.get(kind, "a value")


def value_problem(option: Option, value) -> Optional[str]:
    """What the option table's type, choices or check say ``value`` must be, or None when it may be it."""
    kind = field_type(option)
    if not _fits(kind, value):
        return _type_name(kind)
    choices = option.settings("T").get("choices")
    chosen = value if isinstance(value, list) else [value]
    if choices and value is not None and any(v not in choices for v in chosen):
        return "one of " + ", ".join(map(str, choices))
    ok, what = CHECKS.get(option.dest, (None, ""))
    if ok is not None and value is not None and not ok(value):
        return what
    return None


def check_record_values(record: dict, keys: Iterable[str], where: str) -> None:
    """One line naming the first of ``keys`` whose recorded value its option's row refuses (and the class
    names, which the record holds beside the options), before any of them is used."""
    for key in keys:
        option = _row(key)
        problem = value_problem(option, record[key]) if option is not None and key in record else None
        if problem:
            raise ConfigError(f"{where}: \"{key}\": {json.dumps(record[key])} in the record; --{option.name} must be "
                              f"{problem}")
    names = record.get("class_names")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise ConfigError(f"{where}: \"class_names\" in the record must be a list of strings or null")


def find_record(checkpoint: str) -> Optional[Tuple[str, dict]]:
    """(path, record) of the run that wrote ``checkpoint``, or None when its folder holds no record
    of main.py."""
    folder = os.path.dirname(os.path.abspath(checkpoint))
    record = read_record(folder)
    return None if record is None else (os.path.join(folder, RECORD_FILE), record)


def record_defaults(record: dict, typed: Set[str]) -> dict:
    """Parser defaults from a record: the options the table marks "model" always (the record fixes them),
    those marked "data" unless the user named other data (a typed --dataset, --test_json or --data_root)."""
    out = {k: record[k] for k in MODEL_OPTIONS if record.get(k) is not None}
    if not typed & set(DATA_OPTIONS):
        out.update({k: record[k] for k in DATA_OPTIONS if k in record})
    return out


def _same(key: str, now, then) -> bool:
    if key == "model":
        try:
            return get_backbone(str(now)).name == get_backbone(str(then)).name
        except ConfigError:
            return False
    if isinstance(now, (int, float)) and isinstance(then, (int, float)):
        return float(now) == float(then)
    return now == then


def _some(names) -> str:
    names = list(names)
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def check_flags(args, typed: Set[str], path: str, record: dict) -> None:
    """A typed model option that contradicts the record stops with both values named; so does a typed
    --dataset whose classes are not the record's (in demo.py and export.py it would only rename the
    model's outputs; in val.py and the sweep its data would not fit the model)."""
    spec = DATASETS.get(args.dataset)  # (every script that reads a record has --dataset)
    names = record.get("class_names")
    if "dataset" in typed and spec is not None and spec.classes and names and list(spec.classes) != list(names):
        raise ConfigError(f"--dataset {args.dataset} has {len(spec.classes)} classes ({_some(spec.classes)}) but the "
                          f"checkpoint's run record {path} says {len(names)} ({_some(names)}); drop the flag, or pass "
                          "--no_record to describe the model by flags")
    kind = HEAD_KINDS.get(record.get("head"))
    for key in MODEL_OPTIONS:
        if key == "lam" and kind is not None and kind.training_free:
            continue  # a training-free head's lam (GAP: mean + lam * max) is the evaluation's choice
        if key in typed and key in record and not _same(key, getattr(args, key), record[key]):
            raise ConfigError(f"--{key} is {getattr(args, key)} but the checkpoint's run record {path} says "
                              f"{record[key]}; drop the flag, or pass --no_record to describe the model by flags")
