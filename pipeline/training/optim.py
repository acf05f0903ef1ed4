"""Optimisers and learning-rate schedules of main.py (``--optimizer``, ``--scheduler``).

A schedule is a pure function of the global step (a multiplier of each group's base LR), so a
resumed run computes exactly the LR the uninterrupted one did, with no scheduler state to save. A schedule
that cannot train as asked (a warm-up longer than the run, every step at LR 0, a cosine with no step left
to decay in) is refused in one line (``check_schedule``) before anything trains.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn

from pipeline.errors import ConfigError

OPTIMIZERS = ("sgd", "adamw")
SCHEDULERS = ("step", "onecycle", "cosine")
SPANS_THE_RUN = ("onecycle", "cosine")  # curves laid over the recorded --total_epoch (fixed on resume)
ONECYCLE_DIV, ONECYCLE_FINAL_DIV = 25.0, 1e4  # start at peak / 25, end at start / 1e4 (the usual one-cycle)


def no_decay_names(model: nn.Module) -> set:
    """Names of biases and of the weights of normalisation layers (BatchNorm, LayerNorm, GroupNorm, ...)."""
    norms = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
    names = set()
    for module_name, module in model.named_modules():
        for p_name, _ in module.named_parameters(recurse=False):
            if p_name == "bias" or isinstance(module, norms):
                names.add(f"{module_name}.{p_name}" if module_name else p_name)
    return names


def param_groups(model, lr: float, head_lr_mult: float, weight_decay: float,
                 no_decay_norm_bias: bool = False) -> List[dict]:
    """Groups 0 and 1 are the backbone's and the head's (the head at ``head_lr_mult`` x the LR); with
    ``no_decay_norm_bias`` their biases and normalisation weights follow in groups 2 and 3 without weight
    decay. Each group keeps its ``base_lr`` for the schedule and a ``name``."""
    lr_head = lr * head_lr_mult
    skip = no_decay_names(model) if no_decay_norm_bias else set()
    name_of = {id(p): n for n, p in model.named_parameters()}
    groups, no_decay = [], []
    for part, params, group_lr in (("backbone", model.backbone_parameters(), lr),
                                   ("head", model.head_parameters(), lr_head)):
        group = {"lr": group_lr, "base_lr": group_lr}
        groups.append(dict(group, params=[p for p in params if name_of[id(p)] not in skip],
                           weight_decay=weight_decay, name=part))
        if no_decay_norm_bias:
            no_decay.append(dict(group, params=[p for p in params if name_of[id(p)] in skip], weight_decay=0.0,
                                 name=f"{part}_no_decay"))
    return groups + no_decay


def make_optimizer(name: str, groups: List[dict], lr: float, momentum: float,
                   weight_decay: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    raise ConfigError(f"--optimizer must be one of {', '.join(OPTIMIZERS)} (got {name!r})")


def step_factor(step: int, iters_per_epoch: int, warmup_epochs: float, decay_every: int, gamma: float = 0.1) -> float:
    """The paper's schedule: linear warm-up from 0 over the first ``warmup_epochs`` epochs, per iteration;
    then x``gamma`` every ``decay_every`` epochs, counted from the start of training."""
    warm_iters = warmup_epochs * iters_per_epoch
    warm = min(1.0, step / warm_iters) if warm_iters > 0 else 1.0
    epoch = step // iters_per_epoch
    return warm * gamma ** (epoch // decay_every if decay_every > 0 else 0)


def _cosine(start: float, end: float, fraction: float) -> float:
    return end + (start - end) * (1.0 + math.cos(math.pi * fraction)) / 2.0


def onecycle_factor(step: int, total_steps: int, peak: float = 0.2) -> float:
    """One cycle per run: cosine from 1/25 of the peak up to the peak at ``peak`` of the steps, then
    cosine down to 1/25e4 of it at the last step (the same curve as torch's OneCycleLR, no momentum
    cycling)."""
    low, final = 1.0 / ONECYCLE_DIV, 1.0 / (ONECYCLE_DIV * ONECYCLE_FINAL_DIV)
    up_end = peak * total_steps - 1
    down_end = total_steps - 1
    if step <= up_end:
        return _cosine(low, 1.0, step / up_end) if up_end > 0 else 1.0
    span = down_end - up_end
    return _cosine(1.0, final, min(1.0, (step - up_end) / span)) if span > 0 else final


def cosine_factor(step: int, total_steps: int, warmup_steps: float, floor: float = 0.0) -> float:
    """Linear warm-up from 0 over ``warmup_steps`` (as the paper's step schedule), then half a cosine from
    1 down to ``floor``, reached at the last step (``total_steps - 1``)."""
    if step < warmup_steps:
        return step / warmup_steps
    span = total_steps - 1 - warmup_steps
    return _cosine(1.0, floor, min(1.0, (step - warmup_steps) / span)) if span > 0 else floor


def make_schedule(name: str, *, iters_per_epoch: int, total_epochs: int, warmup_epochs: float, decay_every: int,
                  onecycle_peak: float, lr_floor: float = 0.0) -> Callable[[int], float]:
    """step -> LR multiplier of every group's base LR, for optimiser step ``step`` (0-based, over all epochs);
    a schedule that cannot train as asked is refused (``check_schedule``)."""
    if name not in SCHEDULERS:
        raise ConfigError(f"--scheduler must be one of {', '.join(SCHEDULERS)} (got {name!r})")
    check_schedule(name, total_epochs, warmup_epochs, iters_per_epoch)
    total = iters_per_epoch * total_epochs
    if name == "step":
        return lambda step: step_factor(step, iters_per_epoch, warmup_epochs, decay_every)
    if name == "onecycle":
        return lambda step: onecycle_factor(step, total, onecycle_peak)
    return lambda step: cosine_factor(step, total, warmup_epochs * iters_per_epoch, lr_floor)


def check_schedule(name: str, total_epochs: int, warmup_epochs: float, iters_per_epoch: Optional[int] = None,
                   origin: str = "") -> None:
    """One line naming the flags when the schedule cannot train as asked. From the options alone
    (``iters_per_epoch`` None): a warm-up longer than the run (for cosine, as long: nothing left to decay).
    With the steps known: a run whose every step has LR 0 (one step, starting a warm-up from 0; a one-cycle's
    single step sits at the curve's end, 1/250000 of the peak) and a cosine with no step after its warm-up.
    ``origin`` says where an untyped warm-up came from."""
    warmup = f"--warmup_epoch {warmup_epochs:g}{origin}"
    fix = f"shorten it (e.g. --warmup_epoch {0.1 * total_epochs:g}) or raise --total_epoch"
    if name == "step" and warmup_epochs > total_epochs:
        raise ConfigError(f"{warmup} is longer than the run (--total_epoch {total_epochs}): the learning rate "
                          f"ramps from 0 over the warm-up and would never reach --lr; {fix}")
    if name == "cosine" and warmup_epochs >= total_epochs:
        raise ConfigError(f"{warmup} is not shorter than the run (--total_epoch {total_epochs}): --scheduler cosine "
                          f"would never reach --lr nor decay; {fix}")
    if iters_per_epoch is None:
        return
    steps = iters_per_epoch * total_epochs
    run = f"this run has {steps} training step{'s' if steps > 1 else ''} ({iters_per_epoch} per epoch x " \
          f"--total_epoch {total_epochs}; a smaller --batch_size gives more)"
    if steps == 1 and (name != "step" or warmup_epochs > 0):
        why = {"step": f"{warmup} starts it at learning rate 0, so nothing would train; use --warmup_epoch 0 or",
               "onecycle": f"--scheduler onecycle would train it at the curve's end, "
                           f"1/{ONECYCLE_DIV * ONECYCLE_FINAL_DIV:.0f} of --lr; use",
               "cosine": "--scheduler cosine needs one to warm up and one to decay; use"}[name]
        raise ConfigError(f"{run}: {why} more steps")
    # cosine: the first step at full LR (the first at or after the warm-up's end) must come before the last,
    # which is at the floor
    if name == "cosine" and math.ceil(warmup_epochs * iters_per_epoch) >= steps - 1:
        raise ConfigError(f"{run}: {warmup} lasts {warmup_epochs * iters_per_epoch:g} of them, leaving none between "
                          f"its end and the last step for --scheduler cosine to decay in; {fix}")


SCHEDULE_HELP: Dict[str, str] = {
    "step": "linear warm-up over --warmup_epoch, then x0.1 every --decay_every epochs (the paper's)",
    "onecycle": "one cosine cycle per run, per iteration, peaking at --onecycle_peak of the steps",
    "cosine": "linear warm-up over --warmup_epoch, then cosine decay per iteration to --lr_floor x the LR at the "
              "last step",
}
