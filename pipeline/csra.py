"""Class-specific residual attention (CSRA) heads and the plain GAP baseline head.

Parameter names follow the authors' released checkpoints: a model's
``classifier.multi_head.<k>.head.weight`` is the (C, d, 1, 1) weight of head k.

The heads' arithmetic (CSRA and GAP) runs in float32 even under autocast: a softmax over hundreds of locations
at T up to 7 loses its small weights in bfloat16, and the head costs well under 1% of a forward.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.errors import ConfigError

INF = math.inf
# The authors' code and checkpoints write T = infinity as 99.
LEGACY_INF_TEMPERATURE = 99


def canonical_temperature(T: float) -> float:
    """Map the legacy value 99 (and anything infinite) to math.inf."""
    T = float(T)
    if T == LEGACY_INF_TEMPERATURE or math.isinf(T):
        return INF
    if not T > 0:
        raise ConfigError(f"CSRA temperature must be positive, got {T}")
    return T


def check_temperatures(temps: Sequence[float]) -> List[float]:
    """Canonical temperatures, checked for the rule the pooling relies on: finite ones first,
    at most one infinite one, and it comes last."""
    temps = [canonical_temperature(T) for T in temps]
    n_inf = sum(math.isinf(T) for T in temps)
    if not temps or n_inf > 1 or (n_inf == 1 and not math.isinf(temps[-1])):
        raise ConfigError(f"a temperature list needs finite values first and at most one infinity, last "
                          f"(got {temps})")
    return temps


# The paper's fixed lists (no tuning); checked once, here, where they are built.
HEAD_TEMPERATURES: Dict[int, List[float]] = {
    h: check_temperatures(t) for h, t in {
        1: [1.0],
        2: [1.0, INF],
        4: [1.0, 2.0, 4.0, INF],
        6: [1.0, 2.0, 3.0, 4.0, 5.0, INF],
        8: [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, INF],
    }.items()
}


def temperatures_for(num_heads: int) -> List[float]:
    if num_heads not in HEAD_TEMPERATURES:
        allowed = ", ".join(str(h) for h in HEAD_TEMPERATURES)
        raise ConfigError(f"--num_heads must be one of {allowed} (got {num_heads})")
    return list(HEAD_TEMPERATURES[num_heads])


@dataclass
class HeadMaps:
    """What a head computes from one feature map: logits (B, C) and, per sub-head k, its score maps
    (B, C, h, w), its attention weights softmax(T s) and its temperature."""
    logits: torch.Tensor
    score_maps: List[torch.Tensor]
    attention: List[torch.Tensor]
    temperatures: List[float]

    def heatmap(self, k: int = 0) -> torch.Tensor:
        """Sub-head k's heatmaps (B, C, h, w): its attention for a finite temperature, its score map for
        T = infinity (a one-hot attention would show a single location)."""
        return self.score_maps[k] if math.isinf(self.temperatures[k]) else self.attention[k]


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))


def normalised_scores(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """s_ij = m_i . x_j / ||m_i|| in float32 (or wider), for a (K, d, 1, 1) weight; returns (B, K, h, w)."""
    with torch.autocast(x.device.type, enabled=False):
        w = _at_least_fp32(weight.flatten(1))
        w = w / w.norm(dim=1, keepdim=True)
        return torch.einsum("kd,bdhw->bkhw", w, x.to(w.dtype))


def csra_pool(s: torch.Tensor, finite_T: torch.Tensor, lam: float) -> torch.Tensor:
    """The CSRA logit, summed over heads: for score maps ``s`` (B, H, C, N) whose first
    ``len(finite_T)`` heads have those temperatures and any further (last) head T = infinity,
    sum_k [ mean_j s_kij + lam * a_ki ] with a_ki = sum_j softmax_j(T_k s_kij) s_kij (max_j for infinity).
    """
    with torch.autocast(s.device.type, enabled=False):
        s = _at_least_fp32(s)
        n = finite_T.numel()
        base = s.mean(dim=-1).sum(dim=1)
        part = s[:, :n]
        att = (torch.softmax(part * finite_T.view(1, -1, 1, 1).to(s.dtype), dim=-1) * part).sum(dim=-1).sum(dim=1)
        if n < s.shape[1]:
            att = att + s[:, n:].amax(dim=-1).sum(dim=1)
        return base + lam * att


def attention_maps(s: torch.Tensor, T: float) -> torch.Tensor:
    """softmax_j(T s_ij) over locations of a (B, C, h, w) score map; for T = infinity the
    softmax's limit, the one-hot at the arg-max."""
    B, C, hh, ww = s.shape
    flat = s.flatten(2)
    if math.isinf(T):
        att = F.one_hot(flat.argmax(dim=-1), hh * ww).to(flat.dtype)
    else:
        att = torch.softmax(flat * T, dim=-1)
    return att.view(B, C, hh, ww)


class CSRAHead(nn.Module):
    """The weights of one CSRA head (a 1x1 convolution without bias) and its temperature.

    Run alone it is a one-head CSRA; inside ``MultiHeadCSRA`` all heads are applied together.
    """

    def __init__(self, in_dim: int, num_classes: int, T: float, lam: float):
        super().__init__()
        self.T = canonical_temperature(T)
        self.lam = float(lam)
        self.head = nn.Conv2d(in_dim, num_classes, kernel_size=1, bias=False)

    def _apply(self, fn, recurse=True):
        """After any conversion (``to(memory_format=torch.channels_last)`` included), the (K, d, 1, 1) weight
        keeps its plain strides: this head uses it as a matrix (``normalised_scores``), so its gradient comes
        back with plain strides, and DDP warns and copies at every step when a gradient's strides differ
        from its weight's. For a 1x1 kernel both layouts are the same bytes."""
        super()._apply(fn, recurse)
        w = self.head.weight
        if w.stride() != torch.empty(w.shape, device="meta").stride():
            w.data = w.data.clone(memory_format=torch.contiguous_format)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = normalised_scores(x, self.head.weight).flatten(2).unsqueeze(1)
        finite = [] if math.isinf(self.T) else [self.T]
        return csra_pool(s, torch.tensor(finite, device=s.device), self.lam)


class MultiHeadCSRA(nn.Module):
    """H CSRA heads with the paper's fixed temperature list, all with the same lam; logits summed.

    All heads' classifiers are applied in one batched product; the per-head modules only hold
    the weights (so the checkpoint layout stays the authors').
    """

    def __init__(self, num_heads: int, lam: float, in_dim: int, num_classes: int):
        super().__init__()
        self.temperatures = temperatures_for(num_heads)
        self.multi_head = nn.ModuleList([CSRAHead(in_dim, num_classes, T, lam) for T in self.temperatures])
        self.num_classes = num_classes
        finite = [T for T in self.temperatures if not math.isinf(T)]
        self.register_buffer("finite_temperatures", torch.tensor(finite), persistent=False)

    @property
    def lam(self) -> float:
        return self.multi_head[0].lam

    @lam.setter
    def lam(self, value: float) -> None:
        for h in self.multi_head:
            h.lam = float(value)

    def all_scores(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised score maps of every head, (B, H, C, h, w), float32."""
        weight = torch.cat([h.head.weight for h in self.multi_head], dim=0)
        s = normalised_scores(x, weight)
        B, _, hh, ww = s.shape
        return s.view(B, len(self.multi_head), self.num_classes, hh, ww)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return csra_pool(self.all_scores(x).flatten(3), self.finite_temperatures, self.lam)

    def forward_with_maps(self, x: torch.Tensor) -> HeadMaps:
        """Logits plus, per head, the score maps and the attention weights softmax(T s)."""
        s = self.all_scores(x)
        return HeadMaps(csra_pool(s.flatten(3), self.finite_temperatures, self.lam),
                        [s[:, k] for k in range(s.shape[1])],
                        [attention_maps(s[:, k], T) for k, T in enumerate(self.temperatures)],
                        list(self.temperatures))


class GAPHead(nn.Linear):
    """Baseline: global average pooling + linear layer with bias (torchvision's classifier).

    It is an ``nn.Linear`` so that a model holding it as ``fc`` has torchvision's keys.
    With ``spatial_lam > 0`` it applies the training-free rule of the paper's Table 1:
    the linear layer at every location, score = mean + lam * max over locations.
    """

    temperatures = [INF]  # its heatmap is the score map, as for a T = infinity head

    def __init__(self, in_dim: int, num_classes: int, spatial_lam: float = 0.0):
        super().__init__(in_dim, num_classes, bias=True)
        self.spatial_lam = float(spatial_lam)

    @property
    def lam(self) -> float:
        return self.spatial_lam

    @lam.setter
    def lam(self, value: float) -> None:
        self.spatial_lam = float(value)

    def score_maps(self, x: torch.Tensor) -> torch.Tensor:
        """The linear layer applied at every location, (B, C, h, w), float32."""
        with torch.autocast(x.device.type, enabled=False):
            w = _at_least_fp32(self.weight)
            y = torch.einsum("cd,bdhw->bchw", w, x.to(w.dtype))
            return y + self.bias.to(w.dtype).view(1, -1, 1, 1)

    def spatial_mean_and_max(self, x: torch.Tensor, maps: torch.Tensor = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per class, the mean and the max over locations of the score maps of features ``x``:
        the two parts of the training-free score, for any lam."""
        flat = (self.score_maps(x) if maps is None else maps).flatten(2)
        return flat.mean(dim=-1), flat.amax(dim=-1)

    def _logits(self, x: torch.Tensor, maps: torch.Tensor = None) -> torch.Tensor:
        if self.spatial_lam == 0.0:
            with torch.autocast(x.device.type, enabled=False):
                w = _at_least_fp32(self.weight)
                return F.linear(x.to(w.dtype).mean(dim=(2, 3)), w, self.bias.to(w.dtype))
        y_mean, y_max = self.spatial_mean_and_max(x, maps)
        return y_mean + self.spatial_lam * y_max

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._logits(x)

    def forward_with_maps(self, x: torch.Tensor) -> HeadMaps:
        maps = self.score_maps(x)
        return HeadMaps(self._logits(x, maps), [maps], [attention_maps(maps, INF)], [INF])
