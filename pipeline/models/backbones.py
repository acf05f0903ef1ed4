"""The backbone table: everything the code knows about a backbone, in one entry each.

A ``Backbone`` (``pipeline.models.backbone_spec``) names how to build the provider's model (torchvision's
here; timm's through ``pipeline.models.timm_backbones`` for ``--model timm/<name>``), its ImageNet weights, the
modules of that model that ``MultiLabelNet`` adopts (their names are the checkpoint keys, so state dicts keep
the provider's layout, which for ResNets is the authors'), the function from input to feature map, the feature
width, the weights' own input normalisation and, for the training-free rule on the provider's own
classifier, the function from feature map to that classifier's logits. Adding a backbone is one
``register(...)`` call below; checkpoints are recognised by comparing their keys and shapes with the
backbone's own, so nothing else changes.
"""
from __future__ import annotations

import difflib
import functools
import math
from typing import Callable, Dict, Mapping, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.models as tvm
from torchvision.models.regnet import BlockParams, RegNet

from pipeline.errors import ConfigError
from pipeline.models.backbone_spec import (HALF, IMAGENET, TIMM_PREFIX, UNIT_RANGE, Backbone, Classify,  # noqa: F401
                                           Normalization, Size)

BACKBONES: Dict[str, Backbone] = {}


def register(backbone: Backbone) -> Backbone:
    BACKBONES[backbone.name] = backbone
    return backbone


def get_backbone(name: str) -> Backbone:
    """The table entry for a --model value (case-insensitive), or timm's model for ``timm/<name>``."""
    if name.startswith(TIMM_PREFIX):
        from pipeline.models.timm_backbones import timm_backbone  # timm is optional: imported when asked for
        return timm_backbone(name[len(TIMM_PREFIX):])
    for known, spec in BACKBONES.items():
        if name.lower() == known.lower():
            return spec
    close = difflib.get_close_matches(name.lower(), [n.lower() for n in BACKBONES], n=4, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ConfigError(f"unknown --model {name!r}; {hint}the table: python tools/list_backbones.py, or "
                      "timm/<name> for a timm model")


# --- feature functions: run on the MultiLabelNet that adopted the parts, or on the provider's model --------
def resnet_features(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
    return m.layer4(m.layer3(m.layer2(m.layer1(x))))


def sequential_features(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """MobileNet, EfficientNet, ConvNeXt: the ``features`` stack ends at stride 32."""
    return m.features(x)


def regnet_features(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m.trunk_output(m.stem(x))


def swin_features(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Swin's stages work on (B, h, w, d); its last LayerNorm is per location, so it belongs to the map."""
    return m.norm(m.features(x)).permute(0, 3, 1, 2)


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


def vit_tokens(m: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, Size]:
    """All tokens of the last layer, class token first, and the patch grid. Position embeddings are
    interpolated on the fly when the input grid differs from the model's."""
    x = m.conv_proj(x)
    B, d, h, w = x.shape
    tokens = x.flatten(2).transpose(1, 2)
    cls = m.class_token.expand(B, -1, -1)
    pos = resize_pos_embedding(m.encoder.pos_embedding, (h, w))
    tokens = torch.cat([cls, tokens], dim=1) + pos
    return m.encoder.ln(m.encoder.layers(m.encoder.dropout(tokens))), (h, w)


def vit_features(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Patch tokens of the last layer as a (B, d, h, w) map; the class token is dropped (paper, Table 1)."""
    tokens, (h, w) = vit_tokens(m, x)
    return tokens[:, 1:].transpose(1, 2).reshape(tokens.shape[0], -1, h, w)


def _vit_pos_resizer(patch: int) -> Callable[[torch.Tensor, int], torch.Tensor]:
    return lambda pos, img_size: resize_pos_embedding(pos, (img_size // patch, img_size // patch))


# --- the provider's classifier, as it is and at every location (the training-free rule) --------------
def at_every_location(f: torch.Tensor) -> torch.Tensor:
    """(B, d, h, w) -> (B*h*w, d, 1, 1): each location as a map of its own, so a classifier that pools
    and then classifies gives that location's logits."""
    B, d, h, w = f.shape
    return f.permute(0, 2, 3, 1).reshape(B * h * w, d, 1, 1)


def classify_with(features: Callable[[nn.Module, torch.Tensor], torch.Tensor],
                  tail: Callable[[nn.Module, torch.Tensor], torch.Tensor]) -> Classify:
    """The training-free rule's inputs for a model that pools its feature map and then classifies
    (``tail``: pooling included): its own logits, and the tail applied to every location alone."""
    def classify(m: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        f = features(m, x)
        B, _, h, w = f.shape
        local = tail(m, at_every_location(f)).reshape(B, h * w, -1).transpose(1, 2)
        return tail(m, f), local
    return classify


def vit_classify(m: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """torchvision's ViT classifies its class token; at every location, each patch token."""
    tokens, _ = vit_tokens(m, x)
    return m.heads(tokens[:, 0]), m.heads(tokens[:, 1:]).transpose(1, 2)


def _fc_tail(m: nn.Module, f: torch.Tensor) -> torch.Tensor:
    return m.fc(torch.flatten(m.avgpool(f), 1))


def _classifier_tail(m: nn.Module, f: torch.Tensor) -> torch.Tensor:
    return m.classifier(torch.flatten(F.adaptive_avg_pool2d(f, (1, 1)), 1))


def _convnext_tail(m: nn.Module, f: torch.Tensor) -> torch.Tensor:
    return m.classifier(m.avgpool(f))  # LayerNorm2d on the pooled (N, d, 1, 1) map, flatten, linear


def _swin_tail(m: nn.Module, f: torch.Tensor) -> torch.Tensor:
    return m.head(m.flatten(m.avgpool(f)))


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


# --- RegNet-Y: torchvision's builders compute stage widths from tensor values, which a meta-device
# build (checkpoint signatures) cannot; the same constants, the widths computed on the CPU -----------
def _regnet_y(depth: int, w_0: int, w_a: float, w_m: float, group_width: int) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        with torch.device("cpu"):
            params = BlockParams.from_init_params(depth=depth, w_0=w_0, w_a=w_a, w_m=w_m,
                                                  group_width=group_width, se_ratio=0.25)
        return RegNet(params, norm_layer=functools.partial(nn.BatchNorm2d, eps=1e-05, momentum=0.1))
    return build


# --- the table ----------------------------------------------------------------------------
class Layout(NamedTuple):
    """Where a torchvision family keeps its parts: the modules of the feature map, the function that runs
    them, its classifier's attribute and how the classifier finishes from the feature map."""
    parts: Tuple[str, ...]
    features: Callable
    classifier: str
    tail: Callable


def _torchvision(name: str, display: str, family: str, layout: Layout, dim: int, build=None, weights=None,
                 **kw) -> Backbone:
    weights = weights or tvm.get_model_weights(name).DEFAULT
    return register(Backbone(name, display, family, build or getattr(tvm, name), weights, layout.parts,
                             layout.features, dim, classifier=(layout.classifier,),
                             classify=classify_with(layout.features, layout.tail),
                             num_params=weights.meta["num_params"], **kw))


RESNET_PARTS = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
RESNET = Layout(RESNET_PARTS, resnet_features, "fc", _fc_tail)
SEQUENTIAL = Layout(("features",), sequential_features, "classifier", _classifier_tail)  # MobileNet, EfficientNet
CONVNEXT = Layout(("features",), sequential_features, "classifier", _convnext_tail)
REGNET = Layout(("stem", "trunk_output"), regnet_features, "fc", _fc_tail)
SWIN = Layout(("features", "norm"), swin_features, "head", _swin_tail)
for _name, _display, _dim in [("resnet18", "ResNet-18", 512), ("resnet34", "ResNet-34", 512),
                              ("resnet50", "ResNet-50", 2048), ("resnet101", "ResNet-101", 2048),
                              ("resnet152", "ResNet-152", 2048)]:  # the authors' weights: IMAGENET1K_V1
    _torchvision(_name, _display, "resnet", RESNET, _dim, authors=True,
                 weights=tvm.get_model_weights(_name).IMAGENET1K_V1)
for _name, _display in [("resnext50_32x4d", "ResNeXt-50 32x4d"), ("resnext101_32x8d", "ResNeXt-101 32x8d"),
                        ("resnext101_64x4d", "ResNeXt-101 64x4d"), ("wide_resnet50_2", "Wide ResNet-50-2"),
                        ("wide_resnet101_2", "Wide ResNet-101-2")]:
    _torchvision(_name, _display, "resnet", RESNET, 2048, normalization=IMAGENET)

for _name, _display, _build, _weights, _dim in [
    ("vit_B16_224", "ViT-B/16", tvm.vit_b_16, tvm.ViT_B_16_Weights.IMAGENET1K_V1, 768),
    ("vit_L16_224", "ViT-L/16", tvm.vit_l_16, tvm.ViT_L_16_Weights.IMAGENET1K_V1, 1024),
]:
    register(Backbone(_name, _display, "vit", _build, _weights,
                      ("conv_proj", "class_token", "encoder"), vit_features, _dim, normalization=HALF, img_size=224,
                      batch_size=64, resizable={"encoder.pos_embedding": _vit_pos_resizer(16)}, authors=True,
                      classifier=("heads",), classify=vit_classify, num_params=_weights.meta["num_params"]))

_torchvision("mobilenet_v2", "MobileNet-V2", "mobilenet", SEQUENTIAL, 1280, normalization=IMAGENET)
_torchvision("mobilenet_v3_large", "MobileNet-V3-Large", "mobilenet", SEQUENTIAL, 960, normalization=IMAGENET)
for _i, _dim in enumerate([1280, 1280, 1408, 1536, 1792, 2048, 2304, 2560]):
    _torchvision(f"efficientnet_b{_i}", f"EfficientNet-B{_i}", "efficientnet", SEQUENTIAL, _dim,
                 normalization=IMAGENET)
for _v in "sml":
    _torchvision(f"efficientnet_v2_{_v}", f"EfficientNet-V2-{_v.upper()}", "efficientnet", SEQUENTIAL,
                 1280, normalization=IMAGENET)
for _v, _dim in [("tiny", 768), ("small", 768), ("base", 1024), ("large", 1536)]:
    _torchvision(f"convnext_{_v}", f"ConvNeXt-{_v.title()}", "convnext", CONVNEXT, _dim,
                 normalization=IMAGENET)
for _v, _dim, _params in [  # torchvision's RegNet-Y constants: depth, w_0, w_a, w_m, group width
    ("400mf", 440, (16, 48, 27.89, 2.09, 8)), ("800mf", 784, (14, 56, 38.84, 2.4, 16)),
    ("1_6gf", 888, (27, 48, 20.71, 2.65, 24)), ("3_2gf", 1512, (21, 80, 42.63, 2.66, 24)),
    ("8gf", 2016, (17, 192, 76.82, 2.19, 56)), ("16gf", 3024, (18, 200, 106.23, 2.48, 112)),
    ("32gf", 3712, (20, 232, 115.89, 2.53, 232)),
]:
    _torchvision(f"regnet_y_{_v}", f"RegNet-Y-{_v.upper().replace('_', '.')}", "regnet", REGNET, _dim,
                 build=_regnet_y(*_params), normalization=IMAGENET)
for _v, _dim in [("t", 768), ("s", 768), ("b", 1024)]:
    for _gen in ("", "v2_"):
        _torchvision(f"swin_{_gen}{_v}", f"Swin-{_gen.upper().replace('_', '-')}{_v.upper()}", "swin", SWIN, _dim,
                     normalization=IMAGENET)

register(Backbone("small_cnn", "small CNN (demo)", "cnn", lambda: nn.ModuleDict({"small_cnn": SmallCNN()}), None,
                  ("small_cnn",), lambda m, x: m.small_cnn(x), SmallCNN.out_dim, authors=True))


# --- recognising a checkpoint's backbone ---------------------------------------------------
@functools.lru_cache(maxsize=None)
def _signature(name: str) -> Dict[str, Tuple[int, ...]]:
    """Key -> shape of the backbone's parameters and buffers, from a weightless (meta) build."""
    spec = get_backbone(name)
    with torch.device("meta"):
        model = spec.create(spec.img_size or 224)
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
    spec = get_backbone(name)
    tops = {k.split(".", 1)[0] for k in sd}
    if not set(spec.parts) & tops:  # cheap: no build for a backbone none of whose modules is there
        return False
    sig = _signature(name)
    prefixes = tuple(p + "." for p in spec.parts)
    keys = {k for k in sd if k in spec.parts or k.startswith(prefixes)}
    if keys != set(sig):
        return False
    return all(tuple(sd[k].shape) == sig[k] for k in keys if k not in spec.resizable)


def identify(sd: Mapping[str, torch.Tensor], first: Optional[str] = None) -> Optional[str]:
    """The name of the backbone whose weights ``sd`` holds (``first`` is tried first), or None."""
    order = [n for n in BACKBONES if n != first]
    if first is not None:
        try:
            get_backbone(first)
            order.insert(0, first)
        except ConfigError:
            pass
    for name in order:
        if matches(name, sd):
            return name
    return None
