"""Typed configuration: the options in force, in frozen sections (model, data, runtime, training, the run).

Each section is written out below with a field for every option of one help group of the option table
(``utils.configuration.options``), typed as the table types it (``field_type``; tests/test_config.py holds
the two equal, so an option added to one of those groups is a field added here). A script parses and resolves
its command line (recipe, dataset, run record, --resume) into an ``argparse.Namespace``, then freezes it with
``Config.from_args``; what builds, trains and evaluates reads the Config, and nothing changes it: what the
data decide (the class count and names, partial labels) makes a new one (``with_data``). The run record
(args.json) is ``Config.record()``, the flat schema earlier runs wrote, in the sections' field order.
"""
import argparse
from dataclasses import dataclass, fields, replace
from typing import Any, List, Optional, Tuple, get_type_hints

from utils.configuration.options import Option


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


@dataclass(frozen=True)
class ModelConfig:
    """The options of the help group 'model'."""
    model: str
    head: str
    num_heads: int
    lam: Optional[float]
    num_cls: Optional[int]
    img_size: int
    normalize: Optional[str]


@dataclass(frozen=True)
class DataConfig:
    """The options of the help group 'data'."""
    dataset: str
    test_json: Optional[str]
    classes: Optional[str]
    data_root: Optional[str]
    skip_bad_images: bool
    batch_size: int
    num_workers: int
    fast_decode: bool
    cache_images: bool


@dataclass(frozen=True)
class RuntimeConfig:
    """The options of the help group 'runtime'."""
    amp: str
    no_channels_last: bool
    threads: Optional[int]
    head_float32: bool
    eval_amp: str


@dataclass(frozen=True)
class TrainingConfig:
    """The options of the help group 'training'."""
    train_json: Optional[str]
    val_json: Optional[str]
    val_split: Optional[float]
    split_seed: int
    init_from: Optional[str]
    init_classes: Optional[str]
    class_map: Optional[str]
    cutmix: Optional[str]
    pretrained: str
    recipe: str
    optimizer: str
    scheduler: str
    lr: float
    head_lr_mult: float
    loss: str
    gamma_pos: Optional[float]
    gamma_neg: Optional[float]
    asl_clip: Optional[float]
    partial_labels: bool
    momentum: float
    w_d: float
    no_decay_norm_bias: bool
    warmup_epoch: float
    onecycle_peak: float
    lr_floor: float
    total_epoch: int
    decay_every: int
    randaugment: bool
    cutout: float
    ema: Optional[float]


@dataclass(frozen=True)
class RunConfig:
    """The options of the help group 'the run'."""
    print_freq: int
    train_aug: Optional[Tuple[str, ...]]
    test_aug: Optional[Tuple[str, ...]]
    seed: int
    compile: bool
    eval_every: int
    state_every: int
    test_every_epoch: bool
    keep_epochs: Optional[int]
    output_dir: Optional[str]
    report: Optional[str]
    resume: Optional[str]
    config: Optional[str]
    tensorboard: bool
    mlflow: Optional[str]
    mlflow_experiment: str
    mlflow_parent: Optional[str]


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
        """Freeze a parsed and resolved command line (``utils.configuration.cli.parse_args`` completes every
        option)."""
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
