"""The head table: everything the code knows about a kind of classification head, one entry each.

A ``HeadKind`` says how to build the head, which options of its own it takes (each an option of the table,
passed to ``build`` by name: CSRA's ``num_heads``), under which model attribute it sits (its state-dict prefix,
so checkpoints keep the authors' layout), how its weights are recognised in a state dict and named in
the model-zoo toolbox's layout, whether ``--head_lr_mult`` applies, what ``lam`` means for it and how
it is described. The head module itself is a ``Head`` (below): what the model, export and the heatmaps use
of it, and nothing else. Adding a head is one ``register_head(...)`` call; ``--head``, checkpoint
recognition, export and the sweep follow.

This is the only module that knows head kinds by name.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, Mapping, Optional, Protocol, Sequence, Set, Tuple, runtime_checkable

import torch

from pipeline.errors import ConfigError
from pipeline.models.csra import HeadMaps  # noqa: F401  (what heads return)
from pipeline.models.csra import GAPHead, MultiHeadCSRA, temperatures_for


# (num classes, num sub-heads) of a state dict in our layout, or None when the kind's keys are absent
Recogniser = Callable[[Mapping[str, torch.Tensor]], Optional[Tuple[int, int]]]
# a state dict's head tensors by sub-head temperature, each (C, ...) with a row per class: {T: {name: tensor}}
RowReader = Callable[[Mapping[str, torch.Tensor]], Dict[float, Dict[str, torch.Tensor]]]


@runtime_checkable
class Head(Protocol):
    """What every head module is to the rest of the code: features (B, d, h, w) in, logits (B, C) out; with
    ``forward_with_maps`` the logits and the maps they came from. ``lam``: the one number its kind gives a
    meaning (``HeadKind.lam_help``: CSRA's residual weight, GAP's training-free mean + lam * max), set after
    loading. ``temperatures``: one per map ``forward_with_maps`` returns, the temperature it is drawn with
    (infinity: the map is a score map, shown as it is); export writes them into the file's metadata."""
    lam: float
    temperatures: Sequence[float]

    def forward(self, x: torch.Tensor) -> torch.Tensor: ...

    def forward_with_maps(self, x: torch.Tensor) -> HeadMaps: ...


@dataclass(frozen=True)
class HeadKind:
    name: str                                   # the --head value
    display: str                                # how messages name it: "a CSRA head"
    attribute: str                              # the model attribute holding it = its state-dict prefix
    build: Callable[..., Head]                  # (feat_dim, num_classes, lam, **its options) -> head
    recognise: Recogniser
    zoo_prefix: str                             # its keys' prefix in the model-zoo toolbox's layout
    own_prefix: str = ""                        # the prefix zoo_prefix replaces (default: attribute + ".")
    options: Mapping[str, object] = field(default_factory=dict)  # its own options (names in the option table)
    #                                             and their defaults
    head_lr_mult: bool = False                  # --head_lr_mult applies (else its LR is the backbone's)
    default_lam: float = 0.1
    training_free: bool = False                 # lam is applied after training: the head has
    #                                             spatial_mean_and_max(features), which the sweep uses
    lam_help: str = ""
    rows: Optional[RowReader] = None            # its class rows, which --init_from moves by class name (None:
    #                                             a run from such a checkpoint takes its backbone only)

    @property
    def prefix(self) -> str:
        return self.own_prefix or self.attribute + "."

    @property
    def multi_head(self) -> bool:
        """--num_heads applies: the head's sub-heads are a number of its own."""
        return "num_heads" in self.options

    def options_from(self, given: Mapping[str, object]) -> Dict[str, object]:
        """Its own options: ``given``'s, its defaults for the rest. Another head's option is not read (GAP
        takes no --num_heads); a name no head takes is refused."""
        unknown = sorted(set(given) - head_options())
        if unknown:
            raise ConfigError(f"{unknown[0]!r} is not an option of any head (the heads' options: "
                              f"{', '.join(sorted(head_options()))})")
        return {k: given.get(k, default) for k, default in self.options.items()}

    def describe(self, num_heads: int, lam: float) -> str:
        if self.multi_head:
            return f"{num_heads} head{'' if num_heads == 1 else 's'}, lam {lam}"
        if self.training_free:
            return f"training-free mean + {lam} * max" if lam else "plain"
        return f"lam {lam}"


HEAD_KINDS: Dict[str, HeadKind] = {}


def head_options() -> Set[str]:
    """Every head's own options (a head reads only those its kind lists)."""
    return {k for kind in HEAD_KINDS.values() for k in kind.options}


def register_head(kind: HeadKind) -> HeadKind:
    HEAD_KINDS[kind.name] = kind
    return kind


def get_head(name: str) -> HeadKind:
    if name not in HEAD_KINDS:
        raise ConfigError(f"--head must be one of {', '.join(HEAD_KINDS)} (got {name!r})")
    return HEAD_KINDS[name]


def recognise_head(sd: Mapping[str, torch.Tensor], first: Optional[str] = None):
    """(kind, num classes, num sub-heads) of the first head kind whose keys ``sd`` holds (``first``
    tried first), or None."""
    order = ([first] if first in HEAD_KINDS else []) + [n for n in HEAD_KINDS if n != first]
    for name in order:
        found = HEAD_KINDS[name].recognise(sd)
        if found is not None:
            return HEAD_KINDS[name], found[0], found[1]
    return None


# --- the two kinds of the paper --------------------------------------------------------------
_CSRA_KEY = re.compile(r"^classifier\.multi_head\.(\d+)\.head\.weight$")


def _recognise_csra(sd):
    heads = sorted(int(m.group(1)) for k in sd for m in [_CSRA_KEY.match(k)] if m)
    if not heads:
        return None
    return sd[f"classifier.multi_head.{heads[0]}.head.weight"].shape[0], len(heads)


def _recognise_gap(sd):
    return (sd["fc.weight"].shape[0], 0) if "fc.weight" in sd else None


def _csra_rows(sd):
    heads = sorted(int(m.group(1)) for k in sd for m in [_CSRA_KEY.match(k)] if m)
    return {T: {"weight": sd[f"classifier.multi_head.{k}.head.weight"]}
            for k, T in zip(heads, temperatures_for(len(heads)))}


def _gap_rows(sd):
    return {math.inf: {"weight": sd["fc.weight"], "bias": sd["fc.bias"]}}


register_head(HeadKind(
    "csra", "a CSRA head", "classifier", lambda d, c, lam, num_heads: MultiHeadCSRA(num_heads, lam, d, c),
    _recognise_csra, rows=_csra_rows, zoo_prefix="head.csra_heads.", own_prefix="classifier.multi_head.",
    options={"num_heads": 1},
    head_lr_mult=True, default_lam=0.1, lam_help="the CSRA residual weight"))
register_head(HeadKind(
    "gap", "a GAP head", "fc", lambda d, c, lam: GAPHead(d, c), _recognise_gap, rows=_gap_rows,  # trained plain
    zoo_prefix="head.fc.", default_lam=0.0, training_free=True,
    lam_help="at evaluation, the training-free mean + lam * max rule (0: plain GAP)"))
