"""Starting a run from a trained model on another label set (``main.py --init_from``): the backbone as it
was trained, and the head's rows moved class by class.

A class of the new run takes the checkpoint's row of the class with the same name (case, spaces, underscores
and hyphens ignored) or of a synonym (``--class_map``; the VOC <-> COCO names ship in ``class_maps/``), in
every head: a multi-head CSRA's sub-heads are paired by temperature (T = 1 with T = 1, ..., infinity with
infinity), a GAP head's rows bring their bias. Classes without a match, and sub-heads without a partner,
keep the fresh initialisation the model was built with."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from pipeline.data.classes import read_text
from pipeline.errors import CheckpointError, DataError
from pipeline.models.heads import HEAD_KINDS
from pipeline.weights.checkpoint import checkpoint_contents, non_finite_keys, pretty_model

SHIPPED_MAPS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "class_maps")


def normalise(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch not in " _-")


def read_class_map(path: str) -> List[Tuple[str, str]]:
    """Synonym pairs from a JSON object {name: synonym or [synonyms]} or a text file of lines 'name,synonym,...'."""
    text = read_text(path, "class-map file (--class_map)")
    pairs = []
    if path.endswith(".json"):
        try:
            table = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"--class_map {path}: not valid JSON ({e})") from None
        if not isinstance(table, dict):
            raise DataError(f"--class_map {path}: expected a JSON object {{\"name\": \"synonym\", ...}}")
        for name, other in table.items():
            others = other if isinstance(other, list) else [other]
            if not all(isinstance(o, str) for o in others):
                raise DataError(f"--class_map {path}: the synonyms of {name!r} must be names (strings)")
            pairs += [(name, o) for o in others]
        return pairs
    for n, line in enumerate(text.splitlines(), start=1):
        names = [x.strip() for x in line.split(",") if x.strip()]
        if len(names) == 1:
            raise DataError(f"--class_map {path}: line {n} names one class; write 'name,synonym'")
        pairs += [(names[0], o) for o in names[1:]]
    return pairs


def shipped_pairs() -> List[Tuple[str, str]]:
    return [p for name in sorted(os.listdir(SHIPPED_MAPS)) if name.endswith(".json")
            for p in read_class_map(os.path.join(SHIPPED_MAPS, name))]


def match_classes(new: Sequence[str], old: Sequence[str],
                  pairs: Sequence[Tuple[str, str]]) -> List[Tuple[Optional[int], str]]:
    """For each new class: (the old class whose row it takes, 'name' or 'synonym'), or (None, 'fresh')."""
    by_name: Dict[str, int] = {}
    for i, n in enumerate(old):
        key = normalise(n)
        if key in by_name:
            raise DataError(f"the checkpoint's classes {old[by_name[key]]!r} and {n!r} have the same name once case, "
                            "spaces, underscores and hyphens are ignored")
        by_name[key] = i
    group: Dict[str, set] = {}
    for a, b in pairs:  # synonyms are symmetric and chain: a ~ b ~ c
        merged = group.get(normalise(a), {normalise(a)}) | group.get(normalise(b), {normalise(b)})
        for member in merged:
            group[member] = merged
    out = []
    for n in new:
        key = normalise(n)
        if key in by_name:
            out.append((by_name[key], "name"))
            continue
        found = sorted(by_name[s] for s in group.get(key, ()) if s in by_name)
        out.append((found[0], "synonym") if found else (None, "fresh"))
    return out


@dataclass
class InitSummary:
    path: str
    by_name: int = 0
    by_synonym: int = 0
    fresh: int = 0
    heads: Tuple[int, int] = (0, 0)               # sub-heads given rows, sub-heads of the model
    synonyms: Dict[str, str] = field(default_factory=dict)   # new class -> the checkpoint class it took
    unmatched: List[str] = field(default_factory=list)
    head_kind_differs: bool = False

    def describe(self) -> str:
        if self.head_kind_differs:
            return f"{self.path}: backbone only (its head is of another kind, or has no rows to move: fresh)"
        total = self.by_name + self.by_synonym + self.fresh
        return (f"{self.path}: backbone, and head rows for {self.by_name + self.by_synonym} of {total} classes "
                f"({self.by_name} by name, {self.by_synonym} by synonym, {self.fresh} fresh), "
                f"{self.heads[0]} of {self.heads[1]} heads paired by temperature")

    def record(self) -> dict:
        return {"from": self.path, "by_name": self.by_name, "by_synonym": self.by_synonym, "fresh": self.fresh,
                "heads": list(self.heads), "synonyms": self.synonyms, "unmatched": self.unmatched}


def load_backbone(model: nn.Module, sd: Mapping[str, torch.Tensor], path: str) -> None:
    heads = tuple(kind.prefix for kind in HEAD_KINDS.values())
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(heads)}
    part = {k: v for k, v in sd.items() if not k.startswith(heads)}
    model.adapt_state_dict(part)
    missing, unexpected = [k for k in own if k not in part], [k for k in part if k not in own]
    misshapen = [k for k in part if k in own and part[k].shape != own[k].shape]
    if missing or unexpected or misshapen:
        first = (missing or unexpected or misshapen)[0]
        raise CheckpointError(f"--init_from {path}: its backbone does not fit the model ({len(missing)} missing, "
                              f"{len(unexpected)} unexpected, {len(misshapen)} misshapen keys, e.g. {first})")
    model.load_state_dict(part, strict=False)


def init_from(model: nn.Module, sd: Mapping[str, torch.Tensor], path: str, old_names: Sequence[str],
              new_names: Sequence[str], pairs: Sequence[Tuple[str, str]]) -> InitSummary:
    """Load a trained model's backbone into ``model`` and move its head's rows by class (``sd``: our layout)."""
    info = checkpoint_contents(sd, model.model_name, model.head_type)
    if info["model"] != model.model_name:
        raise CheckpointError(f"--init_from {path}: the checkpoint is a {pretty_model(info['model'])}, --model is "
                              f"{model.model_name}")
    if info["head"] is None:
        raise CheckpointError(f"--init_from {path}: no head weights (a backbone-only file goes to --pretrained)")
    if info["num_classes"] != len(old_names):
        raise CheckpointError(f"--init_from {path}: its head has {info['num_classes']} classes but "
                              f"{len(old_names)} class names were given for it")
    bad = non_finite_keys(sd)
    if bad:
        raise CheckpointError(f"--init_from {path}: holds NaN or infinite weights ({len(bad)} tensors, e.g. {bad[0]})")
    load_backbone(model, sd, path)
    summary = InitSummary(path)
    if info["head"] != model.head_type or model.head_kind.rows is None:
        summary.head_kind_differs = True
        return summary
    matches = match_classes(new_names, old_names, pairs)
    kind = model.head_kind
    theirs, mine = kind.rows(sd), kind.rows(model.state_dict())  # (the model's: views of its parameters)
    with torch.no_grad():
        for T, tensors in mine.items():
            if T not in theirs:
                continue
            for name, t in tensors.items():
                src = theirs[T][name]
                for new, (old, _) in enumerate(matches):
                    if old is not None:
                        t[new].copy_(src[old].reshape(t[new].shape))
    summary.heads = (sum(T in theirs for T in mine), len(mine))
    for new, (old, how) in zip(new_names, matches):
        if how == "name":
            summary.by_name += 1
        elif how == "synonym":
            summary.by_synonym += 1
            summary.synonyms[new] = old_names[old]
        else:
            summary.fresh += 1
            summary.unmatched.append(new)
    return summary
