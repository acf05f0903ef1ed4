"""Training recipes: named presets of main.py's training flags (``--recipe``); any typed flag wins.

- ``paper``: the CSRA paper's (SGD, head LR x10, linear warm-up, x0.1 steps, flip + resized crop, BCE).
- ``strong``: the family the best published ResNet-101 multi-label results train with (ASL, Query2Label,
  ML-Decoder): AdamW at one LR for the whole model, without weight decay on biases and normalisation
  weights, a one-cycle LR per iteration, an EMA of the weights evaluated beside the model, the asymmetric loss, RandAugment and a
  large Cutout on the 8-bit image.

A dataset may change a recipe's values where the recipe does not fit it (``DatasetSpec.recipe_overrides``:
the demo trains a small CNN from scratch in minutes). The order in force: the recipe, the dataset's
changes to it, the typed flags.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    values: Dict[str, object]  # main.py option -> value


RECIPES: Dict[str, Recipe] = {
    "paper": Recipe("paper", "the CSRA paper's", dict(
        optimizer="sgd", scheduler="step", lr=0.01, head_lr_mult=10.0, momentum=0.9, w_d=1e-4, no_decay_norm_bias=False,
        warmup_epoch=2.0, onecycle_peak=0.2, lr_floor=0.0, total_epoch=30, ema=None, loss="bce", randaugment=False,
        cutout=0.0)),
    "strong": Recipe("strong", "AdamW + one-cycle + EMA + ASL + RandAugment + Cutout", dict(
        optimizer="adamw", scheduler="onecycle", lr=1e-4, head_lr_mult=1.0, momentum=0.9, w_d=1e-4, no_decay_norm_bias=True,
        warmup_epoch=2.0, onecycle_peak=0.2, lr_floor=0.0, total_epoch=40, ema=0.9997, loss="asl", randaugment=True,
        cutout=0.5)),
}
PAPER = RECIPES["paper"].values
RECIPE_OPTIONS = tuple(PAPER)  # the options a recipe sets (every recipe sets them all)
assert all(tuple(r.values) == RECIPE_OPTIONS for r in RECIPES.values())
# the training options the header shows, in its order: a recipe's, and the step schedule's decay period (the dataset's)
_AT = RECIPE_OPTIONS.index("warmup_epoch") + 1
TRAINING_OPTIONS = RECIPE_OPTIONS[:_AT] + ("decay_every",) + RECIPE_OPTIONS[_AT:]
