"""Reading checkpoints safely, in every layout our users bring, with one-line errors.

Accepted layouts (all converted to the authors' key layout: torchvision's backbone
keys at the top level, ``classifier.multi_head.<k>.head.weight`` per CSRA head, ``fc.*`` for GAP):
- the authors' plain state dict (``conv1.weight`` ... ``classifier.multi_head.<k>.head.weight``);
- the same saved from DataParallel/DDP (every key prefixed ``module.``);
- the model-zoo toolbox's ``{"state_dict": {"backbone.<key>", "head.csra_heads.<k>.head.weight"}, "meta": ...}``;
- the authors' ViT checkpoints, whose backbone keys are timm's names (``cls_token``, ``blocks.<i>...``);
- a wrapper dict with the weights under ``"model"``: our training-state files (``utils.runs.train_state``),
  and the DeiT/MAE convention.
"""
from __future__ import annotations

import os
import pickle
import re
from typing import Dict, List, Mapping, Optional

import torch

from pipeline.data.labels import expected_count
from pipeline.errors import CheckpointError
from pipeline.models.backbones import BACKBONES, TIMM_PREFIX, get_backbone, identify
from pipeline.models.heads import HEAD_KINDS, get_head, recognise_head


def _looks_like_torch_file(path: str) -> bool:
    """torch.save writes a zip archive (since 1.6) or, in the legacy format, a pickle (first byte 0x80)."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def safe_load(path: str, mmap: bool = False) -> object:
    """torch.load with weights_only=True; refuses files holding arbitrary pickled objects. With
    ``mmap`` the tensors stay on disk until touched (cheap when only small entries are read)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        if not _looks_like_torch_file(path):
            raise CheckpointError(f"{path}: not a PyTorch checkpoint (neither torch.save's zip format nor a pickle)")
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except CheckpointError:
        raise
    except pickle.UnpicklingError as e:
        text = str(e)
        if "Unsupported global" in text or "GLOBAL" in text:
            culprit = next((ln.strip() for ln in text.splitlines() if "Unsupported global" in ln), "")
            raise CheckpointError(
                f"{path}: refused to load: the file holds pickled Python objects beyond tensors "
                f"and plain containers, which could run code ({culprit[:160]}). "
                "Re-save it as a plain state dict from a trusted environment."
            ) from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (damaged or truncated)") from None
    except PermissionError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
    except Exception as e:  # truncated or foreign files fail in many ways inside the unpickler
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({msg[:200]})") from None


def non_finite_keys(sd: Mapping[str, torch.Tensor]) -> List[str]:
    """The keys of the floating-point tensors that hold a NaN or an infinity."""
    return [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]


def strip_prefix(sd: Mapping[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return dict(sd)


# The authors' ViT-CSRA names its weights as timm does: (their name, torchvision's name).
VIT_NAMES = [
    ("cls_token", "class_token"),
    ("pos_embed", "encoder.pos_embedding"),
    ("patch_embed.proj.{p}", "conv_proj.{p}"),
    ("blocks.{i}.norm1.{p}", "encoder.layers.encoder_layer_{i}.ln_1.{p}"),
    ("blocks.{i}.attn.qkv.{p}", "encoder.layers.encoder_layer_{i}.self_attention.in_proj_{p}"),
    ("blocks.{i}.attn.proj.{p}", "encoder.layers.encoder_layer_{i}.self_attention.out_proj.{p}"),
    ("blocks.{i}.norm2.{p}", "encoder.layers.encoder_layer_{i}.ln_2.{p}"),
    ("blocks.{i}.mlp.fc1.{p}", "encoder.layers.encoder_layer_{i}.mlp.0.{p}"),
    ("blocks.{i}.mlp.fc2.{p}", "encoder.layers.encoder_layer_{i}.mlp.3.{p}"),
    ("norm.{p}", "encoder.ln.{p}"),
]


def _template_regex(template: str) -> "re.Pattern":
    pattern = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)")
    return re.compile(f"^{pattern}$")


_VIT_RULES = {
    "to_torchvision": [(_template_regex(a), b) for a, b in VIT_NAMES],
    "to_timm": [(_template_regex(b), a) for a, b in VIT_NAMES],
}


def rename_vit(sd: Mapping[str, torch.Tensor], direction: str) -> Dict[str, torch.Tensor]:
    """ViT keys between the authors' timm-style names and torchvision's ("to_torchvision" or
    "to_timm"); keys no rule names (the CSRA head's) are kept as they are."""
    out = {}
    for k, v in sd.items():
        for regex, template in _VIT_RULES[direction]:
            m = regex.match(k)
            if m:
                k = template.format(**m.groupdict())
                break
        out[k] = v
    return out


def is_timm_vit(sd: Mapping[str, torch.Tensor]) -> bool:
    return "cls_token" in sd or "patch_embed.proj.weight" in sd


_BIASED_HEAD = re.compile(r"^head(\d+)\.(weight|bias)$")


def refuse_biased_vit_heads(sd: Mapping[str, torch.Tensor], path: str) -> None:
    """The authors' later ViT-L/16 COCO file (vit_L16_224_coco_head8_86.5.pth) holds ``head1.weight,
    head1.bias ... head8.bias`` beside timm's ``head.*``: heads with biases, which the published code
    does not have, so how it combined them is unknown. Say so instead of listing missing keys."""
    heads = sorted({int(m.group(1)) for k in sd for m in [_BIASED_HEAD.match(k)] if m})
    if not heads:
        return
    pos = sd.get("pos_embed", sd.get("encoder.pos_embedding"))
    grid = f", position embedding {list(pos.shape)}" if pos is not None else ""
    raise CheckpointError(
        f"{path}: this is the layout of the authors' later ViT COCO checkpoint ({len(heads)} heads with biases, "
        f"head{heads[0]}.weight/bias ... head{heads[-1]}.weight/bias{grid}); their published code has no heads "
        "with biases, so the formula that combines them is unknown and the file cannot be loaded faithfully. "
        "Use their released checkpoints of the published code, or train with main.py --model vit_L16_224")


def to_zoo_layout(sd: Mapping[str, torch.Tensor], meta: Optional[dict] = None) -> dict:
    """Our/authors' state dict -> the model-zoo toolbox's checkpoint (heads as the head table names them)."""
    out = {}
    for k, v in sd.items():
        kind = next((h for h in HEAD_KINDS.values() if k.startswith(h.prefix)), None)
        out[kind.zoo_prefix + k[len(kind.prefix):] if kind else "backbone." + k] = v
    return {"state_dict": out, "meta": dict(meta or {})}


def from_zoo_layout(sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The model-zoo toolbox's keys -> ours (the inverse of ``to_zoo_layout``); other keys are dropped."""
    out = {}
    for k, v in sd.items():
        kind = next((h for h in HEAD_KINDS.values() if k.startswith(h.zoo_prefix)), None)
        if kind is not None:
            out[kind.prefix + k[len(kind.zoo_prefix):]] = v
        elif k.startswith("backbone."):
            out[k[len("backbone."):]] = v
    return out


def unwrap_state_dict(obj: object, path: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """The tensors of a loaded file: inside ``model`` / ``state_dict`` wrappers (training states, DeiT/MAE,
    the toolbox, timm's train.py), without DataParallel's ``module.`` prefix."""
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in ("model", "state_dict") if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointError(f"{path}: holds no tensors")
    return strip_prefix(sd, "module.")


def to_authors_layout(obj: object, path: str = "checkpoint",
                      model_name: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """Return a flat state dict in the authors' key layout from any accepted layout. Timm-style ViT names
    are the authors' ViT (renamed to torchvision's) unless ``model_name`` is a timm model, whose own
    keys they are."""
    sd = unwrap_state_dict(obj, path)
    refuse_biased_vit_heads(sd, path)
    if is_timm_vit(sd) and not (model_name or "").startswith(TIMM_PREFIX):  # the authors' ViT checkpoints
        sd = rename_vit(sd, "to_torchvision")
    if any(k.startswith("backbone.") for k in sd):  # the model-zoo toolbox
        sd = from_zoo_layout(sd)
    return sd


def checkpoint_contents(sd: Mapping[str, torch.Tensor], expected_model: Optional[str] = None,
                        expected_head: Optional[str] = None) -> dict:
    """Backbone (by comparing keys and shapes with the backbone table), head kind (by the head table),
    head count and class count of a state dict in the authors' layout."""
    info: dict = {"model": identify(sd, first=expected_model), "head": None, "num_heads": 0, "num_classes": None}
    found = recognise_head(sd, first=expected_head)
    if found is not None:
        kind, info["num_classes"], info["num_heads"] = found
        info["head"] = kind.name
    return info


def pretty_model(name: Optional[str]) -> str:
    if name in BACKBONES or (name or "").startswith(TIMM_PREFIX):
        return get_backbone(name).display
    return "backbone this code does not know"


def check_compatible(sd: Mapping[str, torch.Tensor], model, path: str, num_classes_from: Optional[str] = None) -> None:
    """Raise a one-line CheckpointError naming the first thing that does not match (``num_classes_from``:
    where the model's class count comes from, ``pipeline.data.labels.expected_count``)."""
    info = checkpoint_contents(sd, model.model_name, model.head_type)
    if info["model"] != model.model_name:
        raise CheckpointError(
            f"{path}: checkpoint is a {pretty_model(info['model'])}, --model is {model.model_name}"
        )
    if info["head"] is None:
        known = " or ".join(f"{k.prefix}*" for k in HEAD_KINDS.values())
        raise CheckpointError(f"{path}: checkpoint has no classifier weights (no {known} keys)")
    if info["head"] != model.head_type:
        raise CheckpointError(f"{path}: checkpoint has {get_head(info['head']).display}, --head is {model.head_type}")
    if model.head_kind.multi_head and info["num_heads"] != model.num_heads:
        raise CheckpointError(
            f"{path}: checkpoint has {info['num_heads']} heads, --num_heads is {model.num_heads}"
        )
    if info["num_classes"] != model.num_classes:
        raise CheckpointError(
            f"{path}: checkpoint has {info['num_classes']} classes, "
            f"{expected_count(model.num_classes, num_classes_from)}"
        )


def load_model_weights(model, path: str, num_classes_from: Optional[str] = None) -> dict:
    """Load any accepted checkpoint into ``model`` (strict), returning its contents (``checkpoint_contents``)."""
    sd = to_authors_layout(safe_load(path), path, model.model_name)
    if model.head_kind.recognise(sd) is not None:  # other heads' keys go, e.g. a leftover ImageNet fc
        others = tuple(h.prefix for h in HEAD_KINDS.values() if h.name != model.head_type)
        sd = {k: v for k, v in sd.items() if not k.startswith(others)}
    check_compatible(sd, model, path, num_classes_from)
    model.adapt_state_dict(sd)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise CheckpointError(f"{path}: does not match the model: " + ", ".join(parts))
    for k, v in sd.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(
                f"{path}: {k} has shape {tuple(v.shape)} in the checkpoint, {tuple(own[k].shape)} in the model"
            )
    bad = non_finite_keys(sd)
    if bad:
        raise CheckpointError(f"{path}: holds NaN or infinite weights ({len(bad)} tensors, e.g. {bad[0]}): the run "
                              "that saved it diverged; load an earlier checkpoint")
    model.load_state_dict(sd, strict=True)
    return checkpoint_contents(sd, model.model_name, model.head_type)
