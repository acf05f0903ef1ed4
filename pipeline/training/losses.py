"""The loss table: one entry per ``--loss``, each a function of (logits, targets) built from the options.

Every loss is computed in float32 on the logits (stable for large ones: log-sigmoids, no log of a
sigmoid), element-wise, then averaged. With partial labels a target of -1 means "unknown": those
entries are left out of the sum and of the count it is divided by.

- ``bce``: binary cross-entropy, the paper's.
- ``focal`` (Lin et al., ICCV 2017): ``-[y (1 - p)^g log p + (1 - y) p^g log(1 - p)]``, one g.
- ``asl`` (Ridnik et al., ICCV 2021): ``-[y (1 - p)^g+ log p + (1 - y) p_m^g- log(1 - p_m)]`` with the
  shifted probability ``p_m = max(p - clip, 0)`` for negatives. Its gradient is the formula's own (the
  focusing weights are not detached).

With all gammas 0 and no clip, focal and ASL are BCE exactly (the same element-wise kernel).
Adding a loss is one ``register_loss(...)`` call.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F

from pipeline.data.labels import UNKNOWN  # a training target of -1 with --partial_labels
from pipeline.errors import ConfigError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def masked_mean(per_entry: torch.Tensor, known: Optional[torch.Tensor]) -> torch.Tensor:
    if known is None:
        return per_entry.mean()
    return (per_entry * known).sum() / known.sum().clamp(min=1)


def asymmetric_terms(logits: torch.Tensor, y: torch.Tensor, gamma_pos: float, gamma_neg: float,
                     clip: float) -> torch.Tensor:
    """Element-wise ASL (see the module docstring) for binary targets ``y``, float32 or wider."""
    x = logits
    pos_term = F.binary_cross_entropy_with_logits(x, torch.ones_like(x), reduction="none")   # -log p
    if clip > 0:
        one_minus_pm = (torch.sigmoid(-x) + clip).clamp(max=1.0)                              # 1 - p_m
        neg_term = -torch.log(one_minus_pm)
        p_neg = 1.0 - one_minus_pm                                                             # p_m
    else:
        neg_term = F.binary_cross_entropy_with_logits(x, torch.zeros_like(x), reduction="none")  # -log(1 - p)
        p_neg = torch.sigmoid(x)
    if gamma_pos:
        pos_term = pos_term * torch.exp(gamma_pos * F.logsigmoid(-x))                           # (1 - p)^g+
    if gamma_neg:  # where p_m is 0 the weight is 0; the clamp keeps pow's gradient finite there
        neg_term = neg_term * torch.where(p_neg > 0, p_neg.clamp(min=1e-12).pow(gamma_neg), 0.0)
    return y * pos_term + (1.0 - y) * neg_term


@dataclass(frozen=True)
class LossKind:
    name: str
    description: str
    defaults: Dict[str, float]                  # its parameters (options of the table) and their defaults
    build: Callable[..., LossFn]                # (its parameters by name) -> element-wise terms


LOSSES: Dict[str, LossKind] = {}


def register_loss(kind: LossKind) -> LossKind:
    LOSSES[kind.name] = kind
    return kind


def _bce(gamma_pos, gamma_neg, asl_clip):
    return lambda x, y: F.binary_cross_entropy_with_logits(x, y, reduction="none")


def _focal(gamma_pos, gamma_neg, asl_clip):
    if gamma_pos != gamma_neg:
        raise ConfigError(f"--loss focal uses one gamma: --gamma_pos {gamma_pos} and --gamma_neg {gamma_neg} differ "
                          "(--loss asl focuses them apart)")
    return lambda x, y: asymmetric_terms(x, y, gamma_pos, gamma_pos, 0.0)


def _asl(gamma_pos, gamma_neg, asl_clip):
    return lambda x, y: asymmetric_terms(x, y, gamma_pos, gamma_neg, asl_clip)


register_loss(LossKind("bce", "binary cross-entropy (the paper's)", {"gamma_pos": 0.0, "gamma_neg": 0.0,
                                                                     "asl_clip": 0.0}, _bce))
register_loss(LossKind("focal", "focal loss, one gamma for positives and negatives",
                       {"gamma_pos": 2.0, "gamma_neg": 2.0, "asl_clip": 0.0}, _focal))
register_loss(LossKind("asl", "asymmetric loss: negatives shifted by --asl_clip and focused harder",
                       {"gamma_pos": 0.0, "gamma_neg": 4.0, "asl_clip": 0.05}, _asl))


def get_loss(name: str) -> LossKind:
    if name not in LOSSES:
        raise ConfigError(f"--loss must be one of {', '.join(LOSSES)} (got {name!r})")
    return LOSSES[name]


def make_criterion(name: str = "bce", *, partial_labels: bool = False, **parameters: Optional[float]) -> LossFn:
    """The training loss: ``criterion(logits, targets)`` -> scalar, computed in float32 (or wider).
    ``parameters`` (gamma_pos=..., ...) left out or None take the loss's own defaults; those of other losses
    are not read, a name no loss takes is refused. With ``partial_labels`` targets of -1 are unknown."""
    terms = get_loss(name).build(**resolved_options(name, parameters))

    def criterion(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
        known = (targets != UNKNOWN).to(x.dtype) if partial_labels else None
        y = (targets.clamp(min=0) if partial_labels else targets).to(x.dtype)
        return masked_mean(terms(x, y), known)

    return criterion


def loss_parameters() -> Tuple[str, ...]:
    """Every loss's parameters (each an option of the table), in a stable order."""
    return tuple(dict.fromkeys(k for kind in LOSSES.values() for k in kind.defaults))


def resolved_options(name: str, given: Mapping[str, Optional[float]]) -> Dict[str, float]:
    """The loss's parameters: ``given``'s values, its own defaults for those missing or None."""
    unknown = sorted(set(given) - set(loss_parameters()))
    if unknown:
        raise ConfigError(f"{unknown[0]!r} is not a parameter of any loss (the losses' parameters: "
                          f"{', '.join(loss_parameters())})")
    return {k: default if given.get(k) is None else given[k] for k, default in get_loss(name).defaults.items()}
