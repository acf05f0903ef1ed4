"""Help text of the option table written from the other tables (recipes, datasets, losses), so a value quoted in
``--help`` is the value in force, and the longer help strings several rows share."""
from __future__ import annotations

from typing import Dict

from pipeline.data.dataset_table import DATASETS
from pipeline.training.losses import LOSSES
from pipeline.training.recipes import RECIPES, SWITCHES, describe_options, show_option


def _value(key: str, value) -> str:
    """How a help note shows an option's value: a switch as on/off, others as show_option does."""
    if key in SWITCHES:
        return "on" if value else "off"
    return show_option(key, value).split(" ", 1)[1]


def recipe_note(key: str) -> str:
    """'(paper: 0.01; strong: 0.0001; --dataset demo: paper 0.05, strong 0.002)': a recipe option's values."""
    parts = [f"{name}: {_value(key, r.values[key])}" for name, r in RECIPES.items()]
    for name, spec in DATASETS.items():
        changed = [f"{recipe} {_value(key, v[key])}" for recipe, v in spec.recipe_overrides.items() if key in v]
        if key in spec.train_overrides:
            changed.append(_value(key, spec.train_overrides[key]))
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
    notes = [f"--dataset {name}: {_value(key, spec.train_overrides[key])}" for name, spec in DATASETS.items()
             if key in spec.train_overrides]
    return f" ({'; '.join(notes)})" if notes else ""


def recipes_help() -> str:
    """Each preset's values and the datasets' changes to them, from the recipe and dataset tables."""
    text = "; ".join(f"{r.name} ({r.description}): {describe_options(r.values)}" for r in RECIPES.values())
    for name, spec in DATASETS.items():
        if spec.recipe_overrides:
            text += f". --dataset {name} changes them: " + "; ".join(
                f"{recipe}: " + ", ".join(show_option(k, v) for k, v in changes.items())
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
