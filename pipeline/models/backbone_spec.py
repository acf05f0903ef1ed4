"""What the code knows about one backbone (``Backbone``), shared by the table in ``pipeline.models.backbones``
and the timm provider in ``pipeline.models.timm_backbones``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn

Size = Tuple[int, int]
Normalization = Tuple[Tuple[float, ...], Tuple[float, ...]]
# Input normalisations on pixels in [0, 1] (named in pipeline.models.runtime.NORMALIZATIONS).
UNIT_RANGE = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
TIMM_PREFIX = "timm/"
# (model, images) -> (logits of the model as it is (B, K), the classifier at every location (B, K, L))
Classify = Callable[[nn.Module, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Backbone:
    name: str                                   # the --model value
    display: str                                # how messages name it
    family: str                                 # "resnet", "vit", "cnn", "mobilenet", ...: --cutmix takes "resnet"
    build: Callable[..., nn.Module]             # the provider's whole model (its classifier too), random weights
    weights: Optional[object]                   # torchvision ImageNet weights enum, or None
    parts: Tuple[str, ...]                      # attributes of that model that MultiLabelNet keeps
    features: Callable[[nn.Module, torch.Tensor], torch.Tensor]  # (model, images) -> (B, d, h, w)
    feat_dim: int
    # the input normalisation the weights were trained with; for the authors' backbones, what runs trained
    # here used before normalisation was recorded (they now normalise by dataset, the authors' rule)
    normalization: Normalization = UNIT_RANGE
    img_size: Optional[int] = None              # input size it dictates (else the dataset's)
    batch_size: Optional[int] = None            # batch it dictates (else the dataset's)
    # state-dict entries whose shape follows the input size: key -> fn(tensor, img_size)
    resizable: Dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = field(default_factory=dict)
    authors: bool = False                       # in the authors' code: normalised by their dataset rule, their layout
    classifier: Tuple[str, ...] = ()            # the provider model's ImageNet classifier (attributes = key prefixes)
    classify: Optional[Classify] = None         # its logits as they are and at every location (training-free rule)
    provider: str = "torchvision"
    sized: bool = False                         # build(img_size=...) (timm ViTs: position embeddings for the grid)
    num_params: Optional[int] = None            # parameters of the whole ImageNet model

    def create(self, img_size: int, **kwargs) -> nn.Module:
        """The provider's model with random weights (``kwargs``: the provider's own options)."""
        return self.build(img_size=img_size, **kwargs) if self.sized else self.build(**kwargs)

    @property
    def weights_file(self) -> str:
        """Where its ImageNet weights come from, for tables and messages."""
        if self.weights is not None:
            return self.weights.url.rsplit("/", 1)[-1]
        return ""
