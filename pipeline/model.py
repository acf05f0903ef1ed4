"""CSRANet: a backbone from the table in ``pipeline.backbones`` with a head from ``pipeline.heads``.

The backbone's modules sit at the top level of the model, as in the authors' ResNet subclass,
so ``model.state_dict()`` is exactly their checkpoint layout.
"""
from __future__ import annotations

import os
from typing import Dict, Optional
from urllib.parse import urlparse

import torch
import torch.nn as nn

from pipeline.backbones import Backbone, get_backbone
from pipeline.checkpoint import load_model_weights, safe_load, strip_prefix
from pipeline.csra import HeadMaps
from pipeline.errors import CheckpointError, ConfigError, PretrainedWeightsError
from pipeline.heads import HeadKind, get_head


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
                f"without network, copy that file into {folder} or pass --pretrained none"
            ) from None
    try:
        return safe_load(path)
    except CheckpointError as e:
        raise PretrainedWeightsError(str(e)) from None


def load_cutmix_weights(path: str, model: nn.Module, spec: Backbone) -> None:
    """Load a local ResNet state dict (e.g. CutMix ImageNet) into a torchvision ResNet:
    ``module.`` prefixes and a ``state_dict`` wrapper accepted, ``fc.*`` dropped."""
    try:
        obj = safe_load(path)
    except CheckpointError as e:
        raise PretrainedWeightsError(f"--cutmix {e}") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise PretrainedWeightsError(f"--cutmix {path}: not a state dict")
    sd = strip_prefix({k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}, "module.")
    sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    misshapen = [k for k in sd if k in own and sd[k].shape != own[k].shape]
    if missing or unexpected or misshapen:
        raise PretrainedWeightsError(
            f"--cutmix {path}: not a {spec.name} state dict ({len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(misshapen)} misshapen keys, e.g. {(missing or unexpected or misshapen)[0]})")
    model.load_state_dict(sd, strict=False)


class CSRANet(nn.Module):
    """A backbone with a head of one of the kinds in ``pipeline.heads`` (``head="csra"``: multi-head CSRA,
    ``head="gap"``: the baseline), held under the kind's attribute (so the state dict is the authors')."""

    def __init__(self, model_name: str = "resnet101", num_classes: int = 20, head: str = "csra",
                 num_heads: int = 1, lam: float = 0.1, img_size: int = 448, pretrained: str = "imagenet",
                 cutmix: Optional[str] = None):
        super().__init__()
        spec = get_backbone(model_name)
        kind = get_head(head)
        if pretrained not in ("imagenet", "none"):
            raise ConfigError(f"--pretrained must be imagenet or none (got {pretrained!r})")
        if cutmix and spec.family != "resnet":
            raise ConfigError("--cutmix loads a ResNet file; it applies to ResNet models only")
        if pretrained == "imagenet" and spec.weights is None and not cutmix:
            raise ConfigError(f"{spec.name} has no ImageNet weights: pass --pretrained none")
        self.model_name = spec.name
        self.head_type = kind.name
        self.num_classes = num_classes
        self.num_heads = num_heads if kind.multi_head else 0
        self.img_size = img_size
        self.feat_dim = spec.feat_dim

        tv = spec.build()
        if cutmix:
            load_cutmix_weights(cutmix, tv, spec)
        elif pretrained == "imagenet":
            tv.load_state_dict(fetch_torchvision_weights(spec.weights))
        for part in spec.parts:
            obj = getattr(tv, part)
            if isinstance(obj, nn.Parameter):
                self.register_parameter(part, obj)
            else:
                self.add_module(part, obj)
        for key, fit in spec.resizable.items():  # e.g. ViT position embeddings to the input grid
            owner, _, leaf = key.rpartition(".")
            module = self.get_submodule(owner)
            setattr(module, leaf, nn.Parameter(fit(getattr(module, leaf).data, img_size)))

        self.add_module(kind.attribute, kind.build(spec.feat_dim, num_classes, num_heads, lam))

    @property
    def backbone(self) -> Backbone:
        return get_backbone(self.model_name)

    @property
    def head_kind(self) -> HeadKind:
        return get_head(self.head_type)

    @property
    def head(self) -> nn.Module:
        return getattr(self, self.head_kind.attribute)

    def head_parameters(self):
        return list(self.head.parameters())

    def backbone_parameters(self):
        head_ids = {id(p) for p in self.head.parameters()}
        return [p for p in self.parameters() if id(p) not in head_ids]

    def set_lam(self, lam: float) -> None:
        """What lam means is the head's (CSRA: the residual weight of every head; GAP: the training-free
        mean + lam * max rule)."""
        self.head.lam = float(lam)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map (B, d, h, w)."""
        return self.backbone.features(self, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

    def forward_with_maps(self, x: torch.Tensor) -> HeadMaps:
        """Logits, per-head score maps and attention maps from one backbone pass."""
        return self.head.forward_with_maps(self.forward_features(x))

    def adapt_state_dict(self, sd: Dict[str, torch.Tensor]) -> None:
        """Fit a loaded state dict's input-size-dependent entries to this model, in place."""
        own = self.state_dict()
        for key, fit in self.backbone.resizable.items():
            if key in sd and key in own and sd[key].shape != own[key].shape:
                sd[key] = fit(sd[key], self.img_size)


def load_for_inference(path: str, *, model_name: str, num_classes: int, head: str = "csra", num_heads: int = 1,
                       lam: float = 0.1, img_size: int = 448):
    """Build the model a checkpoint needs (no ImageNet download: the checkpoint supplies every weight),
    load it, apply ``lam`` (also the GAP head's training-free rule), and put it in eval mode.
    Returns (model, what the checkpoint holds)."""
    model = CSRANet(model_name, num_classes, head=head, num_heads=num_heads, lam=lam, img_size=img_size,
                    pretrained="none")
    info = load_model_weights(model, path)
    model.set_lam(lam)
    return model.eval(), info
