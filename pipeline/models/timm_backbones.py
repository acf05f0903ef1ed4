"""timm as an optional backbone provider: ``--model timm/<name>`` for any timm model with a spatial
feature map.

The model's own ``forward_features`` gives the map: CNNs as (B, d, h, w), Swin-like models as
(B, h, w, d) (turned to NCHW), ViT-like models as tokens, reshaped to the patch grid without their
prefix (class, register, distillation) tokens. MultiLabelNet adopts the top-level modules that
``forward_features`` runs (found once on the meta device), so its state dict holds timm's own keys
and no unused parameter. ViT-like models are built for ``--img_size`` and their position embeddings
resampled from the weights' grid, so a 224 px checkpoint trains at 448 px.
"""
from __future__ import annotations

import difflib
import functools
from typing import Callable, Dict, Tuple

import torch
import torch.nn as nn

from pipeline.errors import ConfigError
from pipeline.models.backbone_spec import IMAGENET, TIMM_PREFIX, Backbone, Normalization

INSTALL = "pip install timm"


def import_timm():
    try:
        import timm
    except ImportError:
        raise ConfigError(f"--model {TIMM_PREFIX}...: timm is not installed; {INSTALL}") from None
    return timm


def _provider(m: nn.Module) -> nn.Module:
    """The timm model itself: MultiLabelNet keeps it beside the modules it adopted (the same objects)."""
    provider = m.__dict__.get("provider_model")
    return m if provider is None else provider


def _check_name(timm, name: str) -> None:
    base = name.split(".", 1)[0]  # a pretrained tag (resnet18.a1_in1k) names weights, not an architecture
    known = timm.list_models()
    if base in known:
        return
    close = difflib.get_close_matches(base, known, n=4, cutoff=0.6)
    hint = f"; did you mean {', '.join(TIMM_PREFIX + c for c in close)}?" if close else ""
    raise ConfigError(f"--model {TIMM_PREFIX}{name}: timm has no model {base!r}{hint} (timm.list_models() lists "
                      f"its {len(known)} models)")


def _layout(model: nn.Module, size: int) -> Tuple[str, int, Tuple[str, ...]]:
    """(layout of forward_features' output, feature width, top-level names it runs), on the meta device."""
    ran = set()
    hooks = [mod.register_forward_pre_hook(lambda *_, top=name.split(".", 1)[0]: ran.add(top))
             for name, mod in model.named_modules() if name]
    try:
        out = model.forward_features(torch.empty(1, 3, size, size, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    if isinstance(out, (tuple, list)):
        out = out[0]
    fmt = getattr(model, "output_fmt", None)
    fmt = getattr(fmt, "value", fmt)
    if out.dim() == 4:
        layout = "nhwc" if fmt == "NHWC" or (fmt is None and out.shape[1] == out.shape[2] != out.shape[3]) else "nchw"
        width = out.shape[3] if layout == "nhwc" else out.shape[1]
    elif out.dim() == 3 and hasattr(model, "patch_embed"):
        layout, width = "tokens", out.shape[2]
    else:
        raise ConfigError(f"timm model {type(model).__name__} gives features of shape {tuple(out.shape)}, not a "
                          "spatial map; CSRA needs one")
    children = [n for n, _ in model.named_children()]
    parts = tuple(n for n in children if n in ran) + tuple(model._parameters) + tuple(
        n for n in model._buffers if n not in model._non_persistent_buffers_set)
    return layout, int(width), parts


def _patch_size(m: nn.Module) -> Tuple[int, int]:
    patch = m.patch_embed.patch_size
    return tuple(patch) if isinstance(patch, (tuple, list)) else (patch, patch)


def _patch_grid(m: nn.Module, x: torch.Tensor) -> Tuple[int, int]:
    pe = m.patch_embed
    if hasattr(pe, "dynamic_feat_size"):
        return tuple(pe.dynamic_feat_size(x.shape[-2:]))
    ph, pw = _patch_size(m)
    return x.shape[-2] // ph, x.shape[-1] // pw


def _to_map(layout: str):
    def features(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        p = _provider(m)
        out = p.forward_features(x)
        if layout == "nchw":
            return out
        if layout == "nhwc":
            return out.permute(0, 3, 1, 2)
        h, w = _patch_grid(p, x)
        patches = out[:, getattr(p, "num_prefix_tokens", 0):]
        if patches.shape[1] != h * w:
            raise ConfigError(f"timm model {type(p).__name__}: {patches.shape[1]} patch tokens for a {h} x {w} grid")
        return patches.transpose(1, 2).reshape(out.shape[0], -1, h, w)
    return features


def _classify(layout: str):
    """The model's own logits (``forward_head``), and forward_head of each location alone: a 1 x 1 map
    (CNN, Swin), or a sequence whose every token is that location (ViT: the class-token, average or
    attention pooling of it is the location's token)."""
    def classify(m: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        p = _provider(m)
        out = p.forward_features(x)
        own = p.forward_head(out)
        B = out.shape[0]
        if layout == "nchw":
            single = out.permute(0, 2, 3, 1).reshape(-1, out.shape[1], 1, 1)
        elif layout == "nhwc":
            single = out.reshape(-1, 1, 1, out.shape[3])
        else:
            tokens = out[:, getattr(p, "num_prefix_tokens", 0):].reshape(-1, 1, out.shape[2])
            single = tokens.expand(-1, getattr(p, "num_prefix_tokens", 0) + 1, -1)
        local = p.forward_head(single).reshape(B, -1, own.shape[-1]).transpose(1, 2)
        return own, local
    return classify


def _pos_resizer(model: nn.Module) -> Dict[str, Callable[[torch.Tensor, int], torch.Tensor]]:
    """ViT-like position embeddings resampled to the grid of another input size (timm's own resampler)."""
    if not isinstance(getattr(model, "pos_embed", None), torch.Tensor) or model.pos_embed.dim() != 3:
        return {}
    from timm.layers import resample_abs_pos_embed
    prefix = 0 if getattr(model, "no_embed_class", False) else getattr(model, "num_prefix_tokens", 0)
    ph, pw = _patch_size(model)

    def fit(pos: torch.Tensor, img_size: int) -> torch.Tensor:
        grid = (img_size // ph, img_size // pw)
        if pos.shape[1] - prefix == grid[0] * grid[1]:
            return pos
        return resample_abs_pos_embed(pos, new_size=list(grid), num_prefix_tokens=prefix)
    return {"pos_embed": fit}


def _normalization(cfg: dict) -> Normalization:
    mean, std = cfg.get("mean"), cfg.get("std")
    if not mean or not std or len(mean) != 3:
        return IMAGENET
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


@functools.lru_cache(maxsize=None)
def timm_backbone(name: str) -> Backbone:
    """The Backbone entry of timm model ``name`` (its layout found once, on the meta device)."""
    timm = import_timm()
    _check_name(timm, name)

    def build(img_size: int = None, **kwargs) -> nn.Module:
        if sized and img_size is not None:
            kwargs["img_size"] = img_size
        return timm.create_model(name, **kwargs)

    with torch.device("meta"):
        try:
            model = timm.create_model(name, pretrained=False, img_size=224)
            sized = True
        except TypeError:
            model = timm.create_model(name, pretrained=False)
            sized = False
        cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
        size = int((cfg.get("input_size") or (3, 224, 224))[-1]) if not sized else 224
        layout, width, parts = _layout(model, size)
    classifier = cfg.get("classifier") or ()
    classifier = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    return Backbone(
        TIMM_PREFIX + name, f"timm {name}", "timm", build, None, parts, _to_map(layout), width,
        normalization=_normalization(cfg), resizable=_pos_resizer(model), classifier=classifier,
        classify=_classify(layout), provider="timm", sized=sized,
        num_params=sum(p.numel() for p in model.parameters()))


def pretrained_input_size(spec: Backbone) -> int:
    """The input size timm's default weights for the model were made for."""
    cfg = import_timm().models.get_pretrained_cfg(spec.name[len(TIMM_PREFIX):])
    return int(cfg.input_size[-1]) if cfg is not None and cfg.input_size else 224


def hub_id(spec: Backbone) -> str:
    """Where timm fetches the model's default ImageNet weights (for messages)."""
    cfg = import_timm().models.get_pretrained_cfg(spec.name[len(TIMM_PREFIX):])
    where = (getattr(cfg, "hf_hub_id", None) or getattr(cfg, "url", None)) if cfg is not None else None
    return f"https://huggingface.co/{where}" if where and "://" not in where else (where or "the Hugging Face hub")
