"""Typed configuration: the options in force, in frozen sections (model, data, runtime, training, the run).

The sections are made from the option table's help groups (``utils.configuration.options``): an option added to a group
is a field of its section, typed from its argparse settings. A script parses and resolves its command line
(recipe, dataset, run record, --resume) into an ``argparse.Namespace``, then freezes it with
``Config.from_args``; what builds, trains and evaluates reads the Config, and nothing changes it: what the
data decide (the class count and names, partial labels) makes a new one (``with_data``). The run record
(args.json) is ``Config.record()``, the flat schema earlier runs wrote.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, fields, make_dataclass, replace
from typing import Any, Dict, List, Optional, Tuple, get_type_hints

from utils.configuration.options import OPTIONS, Option


def field_type(o: Option) -> Any:
    """The Python type of an option's value, from its argparse settings."""
    kw = o.kwargs
    if kw.get("action") in ("store_true", "store_false"):
        return bool
    if "nargs" in kw and kw["nargs"] != "?":
        return Optional[Tuple[str, ...]]
    kind = kw.get("type", str)
    if kind not in (int, float, str):  # a parsing function: the type it returns
        return get_type_hints(kind)["return"]
    return kind if kw.get("default") is not None else Optional[kind]


def _section(name: str, group: str) -> type:
    rows: Dict[str, Option] = {}
    for o in OPTIONS:
        if o.group == group:
            rows.setdefault(o.dest, o)  # a negating flag shares its option's field
    cls = make_dataclass(name, [(dest, field_type(o)) for dest, o in rows.items()], frozen=True)
    cls.__doc__ = f"The options of the help group '{group}': {', '.join(rows)}."
    return cls


ModelConfig = _section("ModelConfig", "model")
DataConfig = _section("DataConfig", "data")
RuntimeConfig = _section("RuntimeConfig", "runtime")
TrainingConfig = _section("TrainingConfig", "training")
RunConfig = _section("RunConfig", "the run")


def _frozen(value):
    return tuple(value) if isinstance(value, list) else value


def _section_from(cls: type, args: argparse.Namespace):
    return cls(**{f.name: _frozen(getattr(args, f.name)) for f in fields(cls)})


@dataclass(frozen=True)
class Config:
    """Every option in force, and where the model description came from."""
    model: ModelConfig
    data: DataConfig
    runtime: RuntimeConfig
    training: TrainingConfig
    run: RunConfig
    class_names: Optional[Tuple[str, ...]]       # None until the label count decides them
    record_path: Optional[str] = None            # the run record that described the checkpoint
    record_names: Optional[Tuple[str, ...]] = None  # the class names that record (or --config's) lists
    config_changes: Optional[Tuple[str, ...]] = None  # with --config: the options typed now
    num_cls_from: Optional[str] = None           # where num_cls comes from, for messages (None: --num_cls)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Config":
        """Freeze a parsed and resolved command line (``utils.configuration.cli.parse_args`` completes every option)."""
        return cls(_section_from(ModelConfig, args), _section_from(DataConfig, args),
                   _section_from(RuntimeConfig, args), _section_from(TrainingConfig, args),
                   _section_from(RunConfig, args), _frozen(args.class_names), args.record_path,
                   _frozen(args.record_names), _frozen(args.config_changes), args.num_cls_from)

    def with_data(self, num_cls: int, class_names: List[str], partial_labels: bool,
                  num_cls_from: Optional[str] = None) -> "Config":
        """The options once the training data are read: their class count (and where it came from, when
        the data decided it) and names, and partial labels when the file leaves classes unknown."""
        return replace(self, model=replace(self.model, num_cls=num_cls), class_names=tuple(class_names),
                       training=replace(self.training, partial_labels=partial_labels),
                       num_cls_from=num_cls_from or self.num_cls_from)

    def record(self) -> dict:
        """The run record's fields (args.json): every option of every section, flat, and the provenance."""
        out: dict = {}
        for section in (self.model, self.data, self.runtime, self.training, self.run):
            out.update({f.name: _listed(getattr(section, f.name)) for f in fields(section)})
        out.update(class_names=_listed(self.class_names), record_path=self.record_path,
                   record_names=_listed(self.record_names), config_changes=_listed(self.config_changes))
        return out


def _listed(value):
    return list(value) if isinstance(value, tuple) else value
