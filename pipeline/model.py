"""Backbones (torchvision ResNets and ViTs) with a CSRA or GAP head.

The backbone's modules sit at the top level of the model, as in the authors' ResNet
subclass, so ``model.state_dict()`` is exactly their checkpoint layout.
"""
from __future__ import annotations

import math
import os
from typing import Callable, Dict, Optional, Tuple
from urllib.parse import urlparse

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.models as tvm

from pipeline.checkpoint import CheckpointError, safe_load, strip_prefix
from pipeline.csra import MHA, GAPHead

RESNETS: Dict[str, Tuple[Callable, object]] = {
    "resnet18": (tvm.resnet18, tvm.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (tvm.resnet34, tvm.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V1),
    "resnet101": (tvm.resnet101, tvm.ResNet101_Weights.IMAGENET1K_V1),
    "resnet152": (tvm.resnet152, tvm.ResNet152_Weights.IMAGENET1K_V1),
}
VITS: Dict[str, Tuple[Callable, object]] = {
    "vit_B16_224": (tvm.vit_b_16, tvm.ViT_B_16_Weights.IMAGENET1K_V1),
    "vit_L16_224": (tvm.vit_l_16, tvm.ViT_L_16_Weights.IMAGENET1K_V1),
}
SMALL_CNN = "small_cnn"
MODEL_NAMES = list(RESNETS) + list(VITS) + [SMALL_CNN]
RESNET_PARTS = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


class PretrainedWeightsError(Exception):
    """ImageNet or CutMix weights could not be obtained (message is one line)."""


def canonical_model_name(name: str) -> str:
    for known in MODEL_NAMES:
        if name.lower() == known.lower():
            return known
    raise ValueError(f"unknown --model {name!r}; choose one of {', '.join(MODEL_NAMES)}")


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


def load_cutmix_weights(path: str) -> Dict[str, torch.Tensor]:
    """A local ResNet state dict: ``module.`` prefixes accepted, ``fc.*`` dropped."""
    try:
        obj = safe_load(path)
    except CheckpointError as e:
        raise PretrainedWeightsError(f"--cutmix {e}") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise PretrainedWeightsError(f"--cutmix {path}: not a state dict")
    sd = strip_prefix({k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}, "module.")
    return {k: v for k, v in sd.items() if not k.startswith("fc.")}


def resize_pos_embedding(pos: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """(1, 1 + g*g, d) position embeddings -> (1, 1 + gh*gw, d), bicubic on the patch grid."""
    cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
    n = patch_pos.shape[1]
    g = int(round(math.sqrt(n)))
    if g * g != n:
        raise ValueError(f"position embedding has {n} patch positions, not a square grid")
    if (g, g) == tuple(grid):
        return pos
    d = patch_pos.shape[-1]
    p = patch_pos.reshape(1, g, g, d).permute(0, 3, 1, 2)
    p = F.interpolate(p.float(), size=grid, mode="bicubic", align_corners=False).to(pos.dtype)
    return torch.cat([cls_pos, p.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], d)], dim=1)


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """A small VGG-style backbone of stride 8 for CPU demos (64 px input -> 8x8 x 128 features)."""

    out_dim = 128

    def __init__(self):
        super().__init__()
        self.stem = _conv_bn(3, 32, 1)
        self.stage1 = nn.Sequential(_conv_bn(32, 32, 2), _conv_bn(32, 32, 1))
        self.stage2 = nn.Sequential(_conv_bn(32, 64, 2), _conv_bn(64, 64, 1))
        self.stage3 = nn.Sequential(_conv_bn(64, 128, 2), _conv_bn(128, 128, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage3(self.stage2(self.stage1(self.stem(x))))


class CSRANet(nn.Module):
    """A torchvision backbone with a multi-head CSRA head (``--head csra``) or a GAP head."""

    def __init__(
        self,
        model_name: str = "resnet101",
        num_classes: int = 20,
        head: str = "csra",
        num_heads: int = 1,
        lam: float = 0.1,
        img_size: int = 448,
        pretrained: str = "imagenet",
        cutmix: Optional[str] = None,
    ):
        super().__init__()
        self.model_name = canonical_model_name(model_name)
        self.is_vit = self.model_name in VITS
        if head not in ("csra", "gap"):
            raise ValueError(f"--head must be csra or gap (got {head!r})")
        if pretrained not in ("imagenet", "none"):
            raise ValueError(f"--pretrained must be imagenet or none (got {pretrained!r})")
        self.head_type = head
        self.num_classes = num_classes
        self.num_heads = num_heads if head == "csra" else 0
        if cutmix and self.model_name not in RESNETS:
            raise ValueError("--cutmix loads a ResNet file; it applies to ResNet models only")
        if self.model_name == SMALL_CNN:
            if pretrained == "imagenet":
                raise ValueError("small_cnn has no ImageNet weights: pass --pretrained none")
            self.small_cnn = SmallCNN()
            self._build_head(head, num_heads, lam, SmallCNN.out_dim, num_classes)
            return

        build, weights = (VITS if self.is_vit else RESNETS)[self.model_name]
        tv = build(weights=None)
        if cutmix:
            state = load_cutmix_weights(cutmix)
            own = tv.state_dict()
            missing = [k for k in own if k not in state and not k.startswith("fc.")]
            unexpected = [k for k in state if k not in own]
            misshapen = [k for k in state if k in own and state[k].shape != own[k].shape]
            if missing or unexpected or misshapen:
                bad = (missing or unexpected or misshapen)[0]
                raise PretrainedWeightsError(
                    f"--cutmix {cutmix}: not a {self.model_name} state dict "
                    f"({len(missing)} missing, {len(unexpected)} unexpected, {len(misshapen)} misshapen keys, "
                    f"e.g. {bad})"
                )
            tv.load_state_dict(state, strict=False)
        elif pretrained == "imagenet":
            tv.load_state_dict(fetch_torchvision_weights(weights))

        if self.is_vit:
            self.patch_size = tv.patch_size
            self.conv_proj = tv.conv_proj
            self.class_token = tv.class_token
            self.encoder = tv.encoder
            grid = (img_size // self.patch_size, img_size // self.patch_size)
            self.encoder.pos_embedding = nn.Parameter(resize_pos_embedding(self.encoder.pos_embedding.data, grid))
            feat_dim = tv.hidden_dim
        else:
            for name in RESNET_PARTS:
                setattr(self, name, getattr(tv, name))
            feat_dim = tv.fc.in_features
        self._build_head(head, num_heads, lam, feat_dim, num_classes)

    def _build_head(self, head: str, num_heads: int, lam: float, feat_dim: int, num_classes: int) -> None:
        self.feat_dim = feat_dim
        if head == "csra":
            self.classifier = MHA(num_heads, lam, feat_dim, num_classes)
        else:
            self.fc = GAPHead(feat_dim, num_classes)

    # --- backbone -----------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map (B, d, h, w)."""
        if self.is_vit:
            return self._vit_features(x)
        if self.model_name == SMALL_CNN:
            return self.small_cnn(x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def _vit_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_proj(x)
        B, d, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        cls = self.class_token.expand(B, -1, -1)
        pos = resize_pos_embedding(self.encoder.pos_embedding, (h, w))
        tokens = torch.cat([cls, tokens], dim=1) + pos
        tokens = self.encoder.ln(self.encoder.layers(self.encoder.dropout(tokens)))
        return tokens[:, 1:].transpose(1, 2).reshape(B, d, h, w)

    # --- head ---------------------------------------------------------------------
    @property
    def head(self) -> nn.Module:
        return self.classifier if self.head_type == "csra" else self.fc

    def head_parameters(self):
        return list(self.head.parameters())

    def backbone_parameters(self):
        head_ids = {id(p) for p in self.head.parameters()}
        return [p for p in self.parameters() if id(p) not in head_ids]

    def set_lam(self, lam: float) -> None:
        """CSRA: the residual weight of every head. GAP: the training-free mean + lam * max rule."""
        if self.head_type == "csra":
            self.classifier.lam = lam
        else:
            self.fc.spatial_lam = float(lam)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

    def forward_with_maps(self, x: torch.Tensor) -> dict:
        """Logits, per-head score maps and attention maps from one backbone pass."""
        return self.head.forward_with_maps(self.forward_features(x))

    def adapt_state_dict(self, sd: Dict[str, torch.Tensor]) -> None:
        """Fit a loaded ViT position embedding to this model's input size, in place."""
        key = "encoder.pos_embedding"
        if self.is_vit and key in sd and sd[key].shape != self.encoder.pos_embedding.shape:
            n = self.encoder.pos_embedding.shape[1] - 1
            g = int(round(math.sqrt(n)))
            sd[key] = resize_pos_embedding(sd[key], (g, g))


def normalization_for(model_name: str) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """ResNets: pixels in [0, 1] without mean/std (released checkpoints). ViTs: mean = std = 0.5."""
    if canonical_model_name(model_name) in VITS:
        return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
