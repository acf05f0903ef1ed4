"""MultiLabelNet (``CSRANet``, the name it had): a backbone from the table in ``pipeline.models.backbones``
with a head from ``pipeline.models.heads``.

The backbone's modules sit at the top level of the model under the provider's names, as in the
authors' ResNet subclass, so ``model.state_dict()`` is exactly their checkpoint layout for their
backbones, and torchvision's or timm's own keys (plus the head's) for the others.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn as nn

from pipeline.errors import ConfigError
from pipeline.models.backbones import Backbone, get_backbone
from pipeline.models.csra import HeadMaps
from pipeline.models.heads import Head, HeadKind, get_head
from pipeline.weights.checkpoint import load_model_weights
from pipeline.weights.pretrained import create_model


class MultiLabelNet(nn.Module):
    """A backbone with a head of one of the kinds in ``pipeline.models.heads`` (``head="csra"``: multi-head CSRA,
    ``head="gap"``: the baseline), held under the kind's attribute (so the state dict is the authors').
    ``head_options``: the head's own options by name (``num_heads=4`` for CSRA; its kind lists them)."""

    def __init__(self, model_name: str = "resnet101", num_classes: int = 20, head: str = "csra", *,
                 lam: float = 0.1, img_size: int = 448, pretrained: str = "imagenet", cutmix: Optional[str] = None,
                 **head_options):
        super().__init__()
        spec = get_backbone(model_name)
        kind = get_head(head)
        options = kind.options_from(head_options)
        if cutmix and spec.family != "resnet":
            raise ConfigError("--cutmix loads a ResNet file; it applies to ResNet models only")
        self.model_name = spec.name
        self.head_type = kind.name
        self.num_classes = num_classes
        self.num_heads = options.get("num_heads", 0)
        self.img_size = img_size
        self.feat_dim = spec.feat_dim

        tv = create_model(spec, img_size, cutmix, flag="--cutmix") if cutmix else \
            create_model(spec, img_size, pretrained)
        for part in spec.parts:
            obj = getattr(tv, part)
            if isinstance(obj, nn.Parameter):
                self.register_parameter(part, obj)
            elif isinstance(obj, torch.Tensor):
                self.register_buffer(part, obj)
            else:
                self.add_module(part, obj)
        if spec.provider != "torchvision":  # its forward_features runs on these same modules; not registered,
            self.__dict__["provider_model"] = tv  # so its unused classifier stays out of the state dict
        for key, fit in spec.resizable.items():  # e.g. torchvision ViT position embeddings to the input grid
            owner, _, leaf = key.rpartition(".")
            module = self.get_submodule(owner)
            old = getattr(module, leaf).data
            new = fit(old, img_size)
            if new.shape != old.shape:
                setattr(module, leaf, nn.Parameter(new))

        self.add_module(kind.attribute, kind.build(spec.feat_dim, num_classes, lam, **options))

    @property
    def backbone(self) -> Backbone:
        return get_backbone(self.model_name)

    @property
    def head_kind(self) -> HeadKind:
        return get_head(self.head_type)

    @property
    def head(self) -> Head:
        return getattr(self, self.head_kind.attribute)

    def head_parameters(self):
        return list(self.head.parameters())

    def backbone_parameters(self):
        head_ids = {id(p) for p in self.head.parameters()}
        return [p for p in self.parameters() if id(p) not in head_ids]

    def head_product_follows_autocast(self, on: bool = True) -> None:
        """Training: the CSRA head's score maps multiply in autocast's dtype, as the backbone does (its norms,
        softmax and sums stay float32); off, in eval mode (even under --eval_amp) or outside autocast, the
        product is float32."""
        for module in self.head.modules():
            if hasattr(module, "scores_follow_autocast"):
                module.scores_follow_autocast = on

    def set_lam(self, lam: float) -> None:
        """What lam means is the head's (CSRA: the residual weight of every head; GAP: the training-free
        mean + lam * max rule)."""
        self.head.lam = float(lam)

    def train(self, mode: bool = True) -> "MultiLabelNet":
        super().train(mode)
        if "provider_model" in self.__dict__:
            self.__dict__["provider_model"].train(mode)
        return self

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


CSRANet = MultiLabelNet  # the name it had: users' code imports it


def load_for_inference(path: str, *, model_name: str, num_classes: Optional[int], head: str = "csra",
                       lam: float = 0.1, img_size: int = 448, num_classes_from: Optional[str] = None,
                       **head_options):
    """Build the model a checkpoint needs (no ImageNet download: the checkpoint supplies every weight),
    load it, apply ``lam`` (also the GAP head's training-free rule), and put it in eval mode.
    Returns (model, what the checkpoint holds)."""
    if num_classes is None:
        raise ConfigError(f"{path}: the number of classes is unknown (no run record beside it, and neither "
                          "--num_cls nor --classes): pass --num_cls N or --classes FILE")
    model = MultiLabelNet(model_name, num_classes, head=head, lam=lam, img_size=img_size, pretrained="none",
                          **head_options)
    info = load_model_weights(model, path, num_classes_from)
    model.set_lam(lam)
    return model.eval(), info
