"""Class-specific residual attention (CSRA) heads and the plain GAP baseline head.

Parameter names follow the authors' released checkpoints (SPEC section 6): a model's
``classifier.multi_head.<k>.head.weight`` is the (C, d, 1, 1) weight of head k.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

INF = math.inf
# The authors' code and checkpoints write T = infinity as 99.
LEGACY_INF_TEMPERATURE = 99

HEAD_TEMPERATURES: Dict[int, List[float]] = {
    1: [1.0],
    2: [1.0, INF],
    4: [1.0, 2.0, 4.0, INF],
    6: [1.0, 2.0, 3.0, 4.0, 5.0, INF],
    8: [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, INF],
}


def canonical_temperature(T: float) -> float:
    """Map the legacy value 99 (and anything infinite) to math.inf."""
    T = float(T)
    if T == LEGACY_INF_TEMPERATURE or math.isinf(T):
        return INF
    if T <= 0:
        raise ValueError(f"CSRA temperature must be positive, got {T}")
    return T


def temperatures_for(num_heads: int) -> List[float]:
    if num_heads not in HEAD_TEMPERATURES:
        allowed = ", ".join(str(h) for h in HEAD_TEMPERATURES)
        raise ValueError(f"--num_heads must be one of {allowed} (got {num_heads})")
    return list(HEAD_TEMPERATURES[num_heads])


def _normalised_scores(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """s_ij = m_i . x_j / ||m_i||, for a (K, d, 1, 1) weight; returns (B, K, H, W)."""
    w = weight.flatten(1)
    w = w / w.norm(dim=1, keepdim=True)
    return torch.einsum("kd,bdhw->bkhw", w.to(x.dtype), x)


def _attention_logit(scores: torch.Tensor, T: float) -> torch.Tensor:
    """a_i = sum_j softmax_j(T s_ij) s_ij over the flattened last dimension."""
    if math.isinf(T):
        return scores.amax(dim=-1)
    return (torch.softmax(scores * T, dim=-1) * scores).sum(dim=-1)


class CSRA(nn.Module):
    """One CSRA head: logit_i = mean_j s_ij + lam * sum_j softmax_j(T s_ij) s_ij."""

    def __init__(self, in_dim: int, num_classes: int, T: float, lam: float):
        super().__init__()
        self.T = canonical_temperature(T)
        self.lam = float(lam)
        self.head = nn.Conv2d(in_dim, num_classes, kernel_size=1, bias=False)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        return _normalised_scores(x, self.head.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scores(x).flatten(2)
        return s.mean(dim=-1) + self.lam * _attention_logit(s, self.T)


class MHA(nn.Module):
    """Multi-head CSRA: H heads with the fixed temperature list, logits summed.

    All heads' classifiers are applied in one batched product; the per-head modules
    only hold the weights (so the checkpoint layout stays the authors').
    """

    def __init__(self, num_heads: int, lam: float, in_dim: int, num_classes: int):
        super().__init__()
        self.temperatures = temperatures_for(num_heads)
        self.multi_head = nn.ModuleList(
            [CSRA(in_dim, num_classes, T, lam) for T in self.temperatures]
        )
        self.num_classes = num_classes
        # every list puts infinity last: heads [0, n_finite) use softmax, the rest use max
        self.n_finite = sum(1 for T in self.temperatures if not math.isinf(T))
        finite = torch.tensor(self.temperatures[:self.n_finite]).view(1, -1, 1, 1)
        self.register_buffer("finite_temperatures", finite, persistent=False)

    @property
    def lam(self) -> float:
        return self.multi_head[0].lam

    @lam.setter
    def lam(self, value: float) -> None:
        for h in self.multi_head:
            h.lam = float(value)

    def all_scores(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised score maps of every head, (B, H, C, h, w)."""
        weight = torch.cat([h.head.weight for h in self.multi_head], dim=0)
        s = _normalised_scores(x, weight)
        B, _, hh, ww = s.shape
        return s.view(B, len(self.multi_head), self.num_classes, hh, ww)

    def logits_from_scores(self, s: torch.Tensor) -> torch.Tensor:
        flat = s.flatten(3)  # (B, H, C, HW)
        base = flat.mean(dim=-1).sum(dim=1)
        part = flat[:, :self.n_finite]
        t = self.finite_temperatures.to(flat.dtype)
        att = (torch.softmax(part * t, dim=-1) * part).sum(dim=-1).sum(dim=1)
        att = att + flat[:, self.n_finite:].amax(dim=-1).sum(dim=1)
        return base + self.lam * att

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_from_scores(self.all_scores(x))

    def forward_with_maps(self, x: torch.Tensor) -> dict:
        """Logits plus, per head, the score maps and the attention weights softmax(T s).

        For T = infinity the attention is the one-hot at the arg-max (the softmax's limit).
        """
        s = self.all_scores(x)
        B, H, C, hh, ww = s.shape
        attention = []
        for k, T in enumerate(self.temperatures):
            flat = s[:, k].flatten(2)
            if math.isinf(T):
                att = F.one_hot(flat.argmax(dim=-1), hh * ww).to(flat.dtype)
            else:
                att = torch.softmax(flat * T, dim=-1)
            attention.append(att.view(B, C, hh, ww))
        return {
            "logits": self.logits_from_scores(s),
            "score_maps": [s[:, k] for k in range(H)],
            "attention": attention,
            "temperatures": list(self.temperatures),
        }


class GAPHead(nn.Linear):
    """Baseline: global average pooling + linear layer with bias (torchvision's classifier).

    It is an ``nn.Linear`` so that a model holding it as ``fc`` has torchvision's keys.
    With ``spatial_lam > 0`` it applies the training-free rule of paper Table 1:
    the linear layer at every location, score = mean + lam * max.
    """

    def __init__(self, in_dim: int, num_classes: int, spatial_lam: float = 0.0):
        super().__init__(in_dim, num_classes, bias=True)
        self.spatial_lam = float(spatial_lam)

    def score_maps(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.einsum("cd,bdhw->bchw", self.weight.to(x.dtype), x)
        return y + self.bias.to(x.dtype).view(1, -1, 1, 1)

    @staticmethod
    def mean_and_max(maps: torch.Tensor):
        """Per class, the mean and the max of score maps (B, C, h, w) over locations."""
        flat = maps.flatten(2)
        return flat.mean(dim=-1), flat.amax(dim=-1)

    def _logits(self, x: torch.Tensor, maps: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.spatial_lam == 0.0:
            return F.linear(x.mean(dim=(2, 3)), self.weight, self.bias)
        y_mean, y_max = self.mean_and_max(self.score_maps(x) if maps is None else maps)
        return y_mean + self.spatial_lam * y_max

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._logits(x)

    def forward_with_maps(self, x: torch.Tensor) -> dict:
        maps = self.score_maps(x)
        flat = maps.flatten(2)
        one_hot = F.one_hot(flat.argmax(-1), flat.shape[-1]).to(flat.dtype)
        return {
            "logits": self._logits(x, maps),
            "score_maps": [maps],
            "attention": [one_hot.view_as(maps)],
            "temperatures": [INF],
        }
