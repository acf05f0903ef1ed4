"""Help text of the option table written from the other tables (recipes, datasets, losses), so a value quoted in
``--help`` is the value in force, and the longer help strings several rows share."""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Mapping, Optional

from pipeline.data.dataset_table import DATASETS
from pipeline.training.losses import LOSSES
from pipeline.training.recipes import RECIPES, TRAINING_OPTIONS

if TYPE_CHECKING:  # (the table is built from this module's help: it imports this one)
    from utils.configuration.options import Option

Rows = Mapping[str, "Option"]  # the option table by name (utils.configuration.options.BY_NAME)


def show_option(key: str, value, rows: Rows) -> str:
    """'lr 0.01', 'ema none'; a switch in its row's words ('no randaugment')."""
    words = rows[key].words if key in rows else None
    if words:
        return words[0 if value else 1]
    return f"{key} {'none' if value is None else value}"


def describe_options(values: Dict[str, object], rows: Rows, marked: Optional[Dict[str, object]] = None) -> str:
    """'optimizer sgd, scheduler step, lr 0.01, ...': the training options in ``values`` that apply (a row's
    applies_to: no momentum with adamw); those that differ from ``marked`` get a '*'. A step schedule whose
    first decay would come after the last epoch says so (legitimate in a short run, but worth knowing)."""
    out = []
    for key in TRAINING_OPTIONS:
        if key not in values:
            continue
        owner = rows[key].applies_to
        if owner and values.get(owner[0]) not in owner[1]:
            continue
        star = "*" if marked is not None and key in marked and values[key] != marked[key] else ""
        out.append(show_option(key, values[key], rows) + star + _never_decays(key, values))
    return ", ".join(out)


def _never_decays(key: str, values: Dict[str, object]) -> str:
    total = values.get("total_epoch")
    if key != "decay_every" or total is None or values[key] < total:
        return ""
    return " (no decay in this run)"


def _value(value) -> str:
    """How a help note shows an option's value: a switch as on/off, others as typed."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return "none" if value is None else str(value)


def recipe_note(key: str) -> str:
    """'(paper: 0.01; strong: 0.0001; --dataset demo: paper 0.05, strong 0.002)': a recipe option's values."""
    parts = [f"{name}: {_value(r.values[key])}" for name, r in RECIPES.items()]
    for name, spec in DATASETS.items():
        changed = [f"{recipe} {_value(v[key])}" for recipe, v in spec.recipe_overrides.items() if key in v]
        if key in spec.train_overrides:
            changed.append(_value(spec.train_overrides[key]))
        if changed:
            parts.append(f"--dataset {name}: {', '.join(changed)}")
    return " (" + "; ".join(parts) + ")"


def dataset_note(key: str) -> str:
    """'the dataset's: 448 voc07/voc12/coco/..., 224 wider, 64 demo': a dataset-row value of each dataset."""
    by_value: Dict[object, list] = {}
    for name, spec in DATASETS.items():
        by_value.setdefault(getattr(spec, key), []).append(name)
    return "the dataset's: " + ", ".join(f"{v} {'/'.join(names)}" for v, names in by_value.items())


def overrides_note(key: str) -> str:
    """'--dataset demo: 0': what a dataset row's train_overrides set."""
    notes = [f"--dataset {name}: {_value(spec.train_overrides[key])}" for name, spec in DATASETS.items()
             if key in spec.train_overrides]
    return f" ({'; '.join(notes)})" if notes else ""


def recipes_help(rows: Rows) -> str:
    """Each preset's values and the datasets' changes to them, from the recipe and dataset tables."""
    text = "; ".join(f"{r.name} ({r.description}): {describe_options(r.values, rows)}" for r in RECIPES.values())
    for name, spec in DATASETS.items():
        if spec.recipe_overrides:
            text += f". --dataset {name} changes them: " + "; ".join(
                f"{recipe}: " + ", ".join(show_option(k, v, rows) for k, v in changes.items())
                for recipe, changes in spec.recipe_overrides.items())
    return text


INFERENCE_AMP_HELP = ("precision: off = float32 (the published numbers' precision); bf16/fp16 opt into autocast (faster "
                      "on GPUs; scores move by up to a few 0.01); auto = bf16 where the GPU or CPU computes it natively")
PRETRAINED_HELP = ("backbone weights: the provider's ImageNet weights (torchvision's, or timm's default for timm/<name>), "
                   "none, or a local .pth/.pt/.safetensors file in the provider's own layout ('module.' and "
                   "state_dict/model wrappers accepted)")
AUTHORS_SCRIPTS = "ignored: accepted so the authors' scripts run"


def loss_defaults(key: str) -> str:
    return ", ".join(f"{k.name} {k.defaults[key]:g}" for k in LOSSES.values())
