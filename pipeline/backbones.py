"""The backbone table: everything the code knows about a backbone, in one entry each.

A ``Backbone`` names the torchvision constructor and ImageNet weights, the modules of the
torchvision model that ``CSRANet`` adopts (their names are the checkpoint keys, so state dicts
keep the authors' layout), the function from input to feature map, the feature width and the
backbone's own input normalisation. Adding a backbone is adding one ``register(...)`` call below; checkpoints
are recognised by comparing their keys and shapes with the backbone's own, so nothing else changes.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Mapping, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.models as tvm

from pipeline.errors import ConfigError

Size = Tuple[int, int]
# Input normalisations on pixels in [0, 1] (named in pipeline.runtime.NORMALIZATIONS).
UNIT_RANGE = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclass(frozen=True)
class Backbone:
    name: str                                   # the --model value
    display: str                                # how messages name it
    family: str                                 # "resnet", "vit", "cnn": what --cutmix and helpers accept
    build: Callable[[], nn.Module]              # the torchvision model, random weights
    weights: Optional[object]                   # torchvision ImageNet weights enum, or None
    parts: Tuple[str, ...]                      # attributes of that model that CSRANet keeps
    features: Callable[[nn.Module, torch.Tensor], torch.Tensor]  # (model, images) -> (B, d, h, w)
    feat_dim: int
    # the backbone's own input convention; runs now normalise by dataset (the authors' rule), and this
    # is only what runs trained here before normalisation was recorded used
    normalization: Tuple[Tuple[float, ...], Tuple[float, ...]] = UNIT_RANGE
    img_size: Optional[int] = None              # input size it dictates (else the dataset's)
    batch_size: Optional[int] = None            # batch it dictates (else the dataset's)
    # state-dict entries whose shape follows the input size: key -> fn(tensor, img_size)
    resizable: Dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = field(default_factory=dict)


BACKBONES: Dict[str, Backbone] = {}


def register(backbone: Backbone) -> Backbone:
    BACKBONES[backbone.name] = backbone
    return backbone


def get_backbone(name: str) -> Backbone:
    """The table entry for a --model value (case-insensitive)."""
    for known, spec in BACKBONES.items():
        if name.lower() == known.lower():
            return spec
    raise ConfigError(f"unknown --model {name!r}; choose one of {', '.join(BACKBONES)}")


# --- feature functions: run on the CSRANet that adopted the parts -----------------------
def resnet_features(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
    return m.layer4(m.layer3(m.layer2(m.layer1(x))))


def resize_pos_embedding(pos: torch.Tensor, grid: Size) -> torch.Tensor:
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


def vit_features(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Patch tokens of the last layer as a (B, d, h, w) map; the class token is dropped. Position
    embeddings are interpolated on the fly when the input grid differs from the model's."""
    x = m.conv_proj(x)
    B, d, h, w = x.shape
    tokens = x.flatten(2).transpose(1, 2)
    cls = m.class_token.expand(B, -1, -1)
    pos = resize_pos_embedding(m.encoder.pos_embedding, (h, w))
    tokens = torch.cat([cls, tokens], dim=1) + pos
    tokens = m.encoder.ln(m.encoder.layers(m.encoder.dropout(tokens)))
    return tokens[:, 1:].transpose(1, 2).reshape(B, d, h, w)


def _vit_pos_resizer(patch: int) -> Callable[[torch.Tensor, int], torch.Tensor]:
    return lambda pos, img_size: resize_pos_embedding(pos, (img_size // patch, img_size // patch))


# --- the small CPU demo backbone ----------------------------------------------------------
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


# --- the table ----------------------------------------------------------------------------
RESNET_PARTS = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
for _name, _display, _build, _weights, _dim in [
    ("resnet18", "ResNet-18", tvm.resnet18, tvm.ResNet18_Weights.IMAGENET1K_V1, 512),
    ("resnet34", "ResNet-34", tvm.resnet34, tvm.ResNet34_Weights.IMAGENET1K_V1, 512),
    ("resnet50", "ResNet-50", tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V1, 2048),
    ("resnet101", "ResNet-101", tvm.resnet101, tvm.ResNet101_Weights.IMAGENET1K_V1, 2048),
    ("resnet152", "ResNet-152", tvm.resnet152, tvm.ResNet152_Weights.IMAGENET1K_V1, 2048),
]:
    register(Backbone(_name, _display, "resnet", _build, _weights, RESNET_PARTS, resnet_features, _dim))

for _name, _display, _build, _weights, _dim in [
    ("vit_B16_224", "ViT-B/16", tvm.vit_b_16, tvm.ViT_B_16_Weights.IMAGENET1K_V1, 768),
    ("vit_L16_224", "ViT-L/16", tvm.vit_l_16, tvm.ViT_L_16_Weights.IMAGENET1K_V1, 1024),
]:
    register(Backbone(_name, _display, "vit", _build, _weights, ("conv_proj", "class_token", "encoder"),
                      vit_features, _dim, normalization=HALF, img_size=224, batch_size=64,
                      resizable={"encoder.pos_embedding": _vit_pos_resizer(16)}))

register(Backbone("small_cnn", "small CNN (demo)", "cnn", lambda: nn.ModuleDict({"small_cnn": SmallCNN()}), None,
                  ("small_cnn",), lambda m, x: m.small_cnn(x), SmallCNN.out_dim))


# --- recognising a checkpoint's backbone ---------------------------------------------------
@functools.lru_cache(maxsize=None)
def _signature(name: str) -> Dict[str, Tuple[int, ...]]:
    """Key -> shape of the backbone's parameters and buffers, from a weightless (meta) build."""
    spec = BACKBONES[name]
    with torch.device("meta"):
        model = spec.build()
    sig = {}
    for part in spec.parts:
        obj = getattr(model, part)
        if isinstance(obj, torch.Tensor):
            sig[part] = tuple(obj.shape)
        else:
            sig.update({f"{part}.{k}": tuple(v.shape) for k, v in obj.state_dict().items()})
    return sig


def matches(name: str, sd: Mapping[str, torch.Tensor]) -> bool:
    """Whether a state dict's backbone keys and shapes are those of backbone ``name``
    (shapes of input-size-dependent entries such as ViT position embeddings are not compared)."""
    sig = _signature(name)
    spec = BACKBONES[name]
    prefixes = tuple(p + "." for p in spec.parts)
    keys = {k for k in sd if k in spec.parts or k.startswith(prefixes)}
    if keys != set(sig):
        return False
    return all(tuple(sd[k].shape) == sig[k] for k in keys if k not in spec.resizable)


def identify(sd: Mapping[str, torch.Tensor], first: Optional[str] = None) -> Optional[str]:
    """The name of the backbone whose weights ``sd`` holds (``first`` is tried first), or None."""
    order = ([first] if first in BACKBONES else []) + [n for n in BACKBONES if n != first]
    for name in order:
        if matches(name, sd):
            return name
    return None
