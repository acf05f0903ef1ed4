"""Starting weights for a backbone: the provider's ImageNet weights, or a local file in the provider's
own layout (a torchvision or timm state dict, ``.pth``/``.pt`` read with ``weights_only=True``, or
``.safetensors``), for clusters without network.

A file may wrap its weights in ``state_dict`` or ``model`` and prefix them with ``module.``; its ImageNet
classifier is dropped unless the caller keeps it (the training-free sweep scores with it). Every other
key must be the model's, with the model's shape: a missing, unexpected or misshapen key stops with one
line naming the first few. Nothing is copied partially: a load is exact or refused.
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Tuple
from urllib.parse import urlparse

import torch
import torch.nn as nn

from pipeline.errors import CheckpointError, ConfigError, PretrainedWeightsError
from pipeline.models.backbones import Backbone, Normalization
from pipeline.weights.checkpoint import non_finite_keys, safe_load, unwrap_state_dict

SOURCES = ("imagenet", "none")
SHOWN = 3  # keys named in a mismatch message


def check_source(value: str, flag: str = "--pretrained") -> None:
    """imagenet, none, or an existing weights file."""
    if value in SOURCES:
        return
    if not os.path.isfile(value):
        raise ConfigError(f"{flag} must be imagenet, none or a weights file (.pth, .pt, .safetensors); "
                          f"{value}: no such file")


def _is_safetensors(path: str) -> bool:
    """safetensors files start with an 8-byte header length, then the JSON header."""
    if path.endswith(".safetensors"):
        return True
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def refuse_non_finite(sd: Dict[str, torch.Tensor], source: str) -> Dict[str, torch.Tensor]:
    """``sd`` unchanged, or one line naming ``source`` and its first tensor holding NaN or an infinity (a
    diverged run's weights would start training at NaN and make every score NaN)."""
    bad = non_finite_keys(sd)
    if bad:
        more = f" ({len(bad)} tensors do)" if len(bad) > 1 else ""
        raise PretrainedWeightsError(f"{source}: tensor {bad[0]} holds NaN or infinite values{more}; these weights "
                                     "cannot be used")
    return sd


def read_weight_file(path: str, flag: str = "--pretrained") -> Dict[str, torch.Tensor]:
    """The tensors of a weights file, unwrapped, without ``module.`` prefixes, all finite."""
    if not os.path.isfile(path):
        raise PretrainedWeightsError(f"{flag} {path}: no such file")
    if _is_safetensors(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            obj = load_file(path, device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise PretrainedWeightsError(f"{flag} {path}: not a readable safetensors file ({str(e)[:120]})") from None
    else:
        try:
            obj = safe_load(path)
        except CheckpointError as e:
            raise PretrainedWeightsError(f"{flag} {e}") from None
    try:
        sd = unwrap_state_dict(obj, path)
    except CheckpointError as e:
        raise PretrainedWeightsError(f"{flag} {e}") from None
    return refuse_non_finite(sd, f"{flag} {path}")


def _is_classifier(key: str, spec: Backbone) -> bool:
    return any(key == c or key.startswith(c + ".") for c in spec.classifier)


def classifier_outputs(model: nn.Module, spec: Backbone) -> Optional[int]:
    """How many outputs the provider model's own classifier has (its last weight matrix's rows), or None
    where the table names no classifier."""
    rows = [v.shape[0] for k, v in model.state_dict().items()
            if _is_classifier(k, spec) and k.endswith("weight") and v.dim() >= 2]
    return rows[-1] if rows else None


def _examples(keys) -> str:
    keys = list(keys)
    return ", ".join(keys[:SHOWN]) + (", ..." if len(keys) > SHOWN else "")


def load_weights(model: nn.Module, sd: Dict[str, torch.Tensor], spec: Backbone, source: str, *,
                 img_size: int, keep_classifier: bool = False) -> None:
    """Load ``sd`` (the provider's layout) into the provider's ``model`` exactly, or stop with one line."""
    own = model.state_dict()
    if not keep_classifier:
        sd = {k: v for k, v in sd.items() if not _is_classifier(k, spec)}
        own = {k: v for k, v in own.items() if not _is_classifier(k, spec)}
    grid_size = img_size if spec.sized else (spec.img_size or img_size)
    for key, fit in spec.resizable.items():  # e.g. ViT position embeddings from the file's grid to the model's
        if key in sd and key in own and sd[key].shape != own[key].shape:
            sd[key] = fit(sd[key], grid_size)
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    misshapen = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in sd
                 if k in own and sd[k].shape != own[k].shape]
    if missing or unexpected or misshapen:
        parts = [f"{len(v)} {what} ({_examples(v)})" for what, v in
                 (("missing", missing), ("unexpected", unexpected), ("misshapen: file vs model", misshapen)) if v]
        hint = " (the sweep needs the file's classifier)" if keep_classifier and any(
            _is_classifier(k, spec) for k in missing) else ""
        raise PretrainedWeightsError(f"{source}: not a {spec.name} state dict: " + "; ".join(parts) + hint)
    model.load_state_dict(sd, strict=False)


def fetch_torchvision_weights(weights) -> Dict[str, torch.Tensor]:
    """torchvision weights from torch's hub cache, downloading them there if absent."""
    url = weights.url
    filename = os.path.basename(urlparse(url).path)
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    path = os.path.join(folder, filename)
    if not os.path.isfile(path):
        try:
            os.makedirs(folder, exist_ok=True)
            torch.hub.download_url_to_file(url, path, progress=True)
        except Exception as e:  # no network, proxy, disk: all end the same way for the user
            raise PretrainedWeightsError(
                f"could not download ImageNet weights {filename} ({type(e).__name__}: {str(e)[:80]}); "
                f"without network, copy that file into {folder} or pass --pretrained PATH (the file anywhere), "
                "or --pretrained none"
            ) from None
    try:
        obj = safe_load(path)
    except CheckpointError as e:
        raise PretrainedWeightsError(str(e)) from None
    if isinstance(obj, dict):
        refuse_non_finite({k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}, path)
    return obj


def _timm_imagenet(spec: Backbone, img_size: int) -> nn.Module:
    from pipeline.models.timm_backbones import hub_id
    try:
        return spec.create(img_size, pretrained=True)
    except Exception as e:  # no network, no hub cache, a model without weights
        raise PretrainedWeightsError(
            f"could not fetch timm's ImageNet weights for {spec.name} from {hub_id(spec)} ({type(e).__name__}: "
            f"{' '.join(str(e).split())[:80]}); without network, download its model.safetensors elsewhere and pass "
            "--pretrained PATH, or --pretrained none") from None


def create_model(spec: Backbone, img_size: int, pretrained: str = "none", *, flag: str = "--pretrained",
                 keep_classifier: bool = False) -> nn.Module:
    """The provider's whole model with the weights asked for: ``imagenet``, ``none`` or a file's."""
    check_source(pretrained, flag)
    if pretrained == "imagenet":
        if spec.provider == "timm":
            model = _timm_imagenet(spec, img_size)
            refuse_non_finite(model.state_dict(), f"timm's ImageNet weights for {spec.name}")
            return model
        if spec.weights is None:
            raise ConfigError(f"{spec.name} has no ImageNet weights: pass --pretrained none (or a weights file)")
        model = spec.create(img_size)
        load_weights(model, fetch_torchvision_weights(spec.weights), spec, spec.weights_file, img_size=img_size,
                     keep_classifier=True)
        return model
    model = spec.create(img_size)
    if pretrained != "none":
        load_weights(model, read_weight_file(pretrained, flag), spec, f"{flag} {pretrained}", img_size=img_size,
                     keep_classifier=keep_classifier)
    return model


def imagenet_view(spec: Backbone) -> Tuple[int, Normalization]:
    """The input size and normalisation the provider's ImageNet weights were evaluated with."""
    if spec.provider == "timm":
        from pipeline.models.timm_backbones import pretrained_input_size
        return pretrained_input_size(spec), spec.normalization
    if spec.weights is None or spec.classify is None:
        raise ConfigError(f"{spec.name} has no ImageNet classifier")
    view = spec.weights.transforms()
    return int(view.crop_size[0]), (tuple(view.mean), tuple(view.std))
