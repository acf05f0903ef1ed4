"""Class-specific residual attention (CSRA) heads and the plain GAP baseline head.

Parameter names follow the authors' released checkpoints: a model's
``classifier.multi_head.<k>.head.weight`` is the (C, d, 1, 1) weight of head k.

The heads' arithmetic runs in float32 even under autocast: a softmax over hundreds of locations at T up to 7
loses its small weights in bfloat16. One part may follow autocast: in training, the CSRA score maps' product
(a matmul of d x C per location, at 9,605 classes a quarter of ResNet-50's forward) runs in the training
precision, as the backbone's convolutions do (``score_products``); above ``FUSED_FROM`` entries the pooling
keeps only those products for its backward pass and recomputes the rest in float32 (``_FusedPool``).
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


def score_products(x: torch.Tensor, weights: Sequence[torch.Tensor],
                   follow_autocast: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """The two factors of every head's score maps s_ij = m_i . x_j / ||m_i||, for (C, d, 1, 1) weights (one per
    head): the products m_i . x_j as (B, h*w, H, C), and 1 / ||m_i|| as (H, C) in float32 (or wider).

    Normalising the maps rather than the weights scales B*h*w*C numbers instead of C*d (9,605 x 2,048 at
    OpenImages size, and as many again in the backward pass). The products are float32 (or wider) unless
    ``follow_autocast`` and autocast is on for x's device: then they run in autocast's dtype (bf16/fp16), the
    training precision, on the tensor cores or bf16 units the backbone uses (set for training through
    ``MultiLabelNet.head_product_follows_autocast``). A channels-last map is read as the (B, h*w, d) matrix it is in
    memory, without a copy."""
    device = x.device.type
    if follow_autocast and torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
    else:
        dtype = torch.promote_types(torch.promote_types(x.dtype, weights[0].dtype), torch.float32)
    with torch.autocast(device, enabled=False):
        B, d, h, w = x.shape
        flat = x.permute(0, 2, 3, 1).reshape(B, h * w, d).to(dtype)
        parts = [_products(flat, wk.flatten(1), dtype) for wk in weights]
        raw = parts[0][0].unsqueeze(2) if len(parts) == 1 else torch.stack([p[0] for p in parts], dim=2)
        inv_norm = torch.stack([p[1] for p in parts])
    return raw, inv_norm


def _exporting() -> bool:
    """An ONNX or TorchScript export traces the model: plain ops only (it keeps no backward pass anyway)."""
    return torch.jit.is_tracing() or torch.compiler.is_exporting()


def _products(flat: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """One head's products and inverse norms: through _Products when gradients flow, else plain ops."""
    if torch.is_grad_enabled() and (flat.requires_grad or weight.requires_grad) and not _exporting():
        return _Products.apply(flat, weight, dtype)
    return torch.matmul(flat, weight.to(dtype).t()), 1.0 / _at_least_fp32(weight).norm(dim=1)


class _Products(torch.autograd.Function):
    """One head's products x_j . m_i (in ``dtype``) and 1 / ||m_i|| (float32 or wider), with a backward pass that
    makes the weight's gradient in one matrix product and one pass over the weight (the product's part plus
    the norm's, -m_i / ||m_i||^3 times the inverse norm's gradient), where separate autograd ops would make
    and add several (C, d) tensors: 9,605 x 2,048 each at OpenImages size."""

    @staticmethod
    def forward(ctx, flat, weight, dtype):
        low = weight.to(dtype)
        inv_norm = 1.0 / _at_least_fp32(weight).norm(dim=1)
        ctx.save_for_backward(flat, low, weight, inv_norm)
        return torch.matmul(flat, low.t()), inv_norm

    @staticmethod
    def backward(ctx, g_raw, g_inv):
        flat, low, weight, inv_norm = ctx.saved_tensors
        g_flat = g_weight = None  # (autograd hands zeros for an unused output, in that output's dtype)
        if ctx.needs_input_grad[0]:
            g_flat = torch.matmul(g_raw, low)
        if ctx.needs_input_grad[1]:
            g_weight = torch.matmul(g_raw.reshape(-1, g_raw.shape[-1]).t(), flat.reshape(-1, flat.shape[-1]))
            coef = (-g_inv * inv_norm ** 3).unsqueeze(1)  # d(1/||m||)/dm = -m / ||m||^3; bf16 as autocast
            base = low if low.dtype == torch.bfloat16 else _at_least_fp32(weight)  # (fp16 could overflow)
            g_weight = torch.addcmul(g_weight, base, coef.to(base.dtype))
            g_weight = g_weight.to(weight.dtype)
        return g_flat, g_weight, None


CHUNK_PER_IMAGE = 1 << 18  # the pooling's float32 temporaries per image and chunk of classes (1 MB)
# maps of more entries (B x h*w x H x C) train through _FusedPool; below, autograd's own ops are as fast or faster
# and their float32 copies small. Measured for one 9,605-class head on 2,048-d features (2-core native-bf16 CPU,
# bf16 product): 6.3M entries 158 vs 121 ms (fused vs autograd), 9.4M 206 vs 284 ms, 30M 646 vs 1,036 ms and
# 222 vs 481 MB
FUSED_FROM = 1 << 23


def _class_chunks(raw: torch.Tensor):
    """Slices over the class axis (last) of a (B, N, H, C) tensor, each with at most CHUNK_PER_IMAGE entries an
    image (not counting the batch: an export keeps its batch dimension free)."""
    per_class = max(1, raw.shape[1] * raw.shape[2])
    step = max(1, CHUNK_PER_IMAGE // per_class)
    return [slice(c, min(c + step, raw.shape[-1])) for c in range(0, raw.shape[-1], step)]


def _maps(raw: torch.Tensor, inv_norm: torch.Tensor) -> torch.Tensor:
    """s = products x 1 / ||m||, float32 (or wider), (B, N, H, C), in one pass (bf16 x float32 is float32)."""
    return raw * _at_least_fp32(inv_norm)


def _pool(s: torch.Tensor, finite_T: torch.Tensor, lam: float) -> torch.Tensor:
    """The CSRA logits (B, C) of score maps s (B, N, H, C) in float32 (or wider): the formula of csra_pool."""
    n = finite_T.numel()
    base = s.mean(dim=1).sum(dim=1)
    part = s[:, :, :n]
    T = finite_T.view(1, 1, -1, 1).to(s.dtype)
    att = (torch.softmax(part * T, dim=1) * part).sum(dim=1).sum(dim=1)
    if n < s.shape[2]:
        att = att + s[:, :, n:].amax(dim=1).sum(dim=1)
    return base + lam * att


def _pool_grad(s: torch.Tensor, finite_T: torch.Tensor, lam: float, g: torch.Tensor) -> torch.Tensor:
    """d logits / d s, times the logits' gradient ``g`` (B, C): 1/N + lam * p_j (1 + T (s_j - a)) for a finite
    T (p = softmax(T s), a = sum_j p_j s_j), 1/N + lam / (number of maxima) at the maxima for T = infinity."""
    n, N = finite_T.numel(), s.shape[1]
    g = g.view(g.shape[0], 1, 1, -1)
    grad = torch.empty_like(s)
    part = s[:, :, :n]
    T = finite_T.view(1, 1, -1, 1).to(s.dtype)
    p = torch.softmax(part * T, dim=1)
    a = (p * part).sum(dim=1, keepdim=True)
    torch.addcmul(g / N, g * lam, torch.addcmul(p, p * T, part - a), out=grad[:, :, :n])  # (fewer full passes)
    if n < s.shape[2]:
        rest = s[:, :, n:]
        top = (rest == rest.amax(dim=1, keepdim=True)).to(s.dtype)
        torch.addcmul(g / N, g * lam, top / top.sum(dim=1, keepdim=True), out=grad[:, :, n:])
    return grad


def _joined(parts: List[torch.Tensor], dim: int) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)


def _chunked_pool(raw, inv_norm, finite_T, lam):
    return _joined([_pool(_maps(raw[..., c], inv_norm[:, c]), finite_T, lam) for c in _class_chunks(raw)], -1)


def _fuses(raw: torch.Tensor) -> bool:
    return raw.numel() > FUSED_FROM


class _FusedPool(torch.autograd.Function):
    """csra_pool for training above FUSED_FROM entries: keeps only the products, in the dtype they came in (bf16 under autocast), and the
    norms, and recomputes the maps and the softmax class chunk by class chunk in the backward pass: no
    (B, N, H, C) float32 tensor is stored."""

    @staticmethod
    def forward(ctx, raw, inv_norm, finite_T, lam):
        ctx.save_for_backward(raw, inv_norm, finite_T)
        ctx.lam = lam
        return _chunked_pool(raw, inv_norm, finite_T, lam)

    @staticmethod
    def backward(ctx, g):
        raw, inv_norm, finite_T = ctx.saved_tensors
        grad_raw, grad_inv = [], []
        for c in _class_chunks(raw):
            inv = _at_least_fp32(inv_norm[:, c])
            s = raw[..., c] * inv
            gs = _pool_grad(s, finite_T, ctx.lam, g[:, c])
            grad_raw.append((gs * inv).to(raw.dtype))
            grad_inv.append(((gs * s).sum(dim=(0, 1)) / inv).to(inv_norm.dtype))  # d s / d inv = raw = s / inv
        return _joined(grad_raw, -1), _joined(grad_inv, -1), None, None


def csra_pool(raw: torch.Tensor, inv_norm: torch.Tensor, finite_T: torch.Tensor, lam: float) -> torch.Tensor:
    """The CSRA logit, summed over heads, of score maps s = raw x inv_norm (``score_products``: (B, N, H, C) and
    (H, C)) whose first ``len(finite_T)`` heads have those temperatures and any further (last) head T =
    infinity: sum_k [ mean_j s_kij + lam * a_ki ] with a_ki = sum_j softmax_j(T_k s_kij) s_kij (max_j for
    infinity). Always computed in float32 (or wider); without gradients class chunk by class chunk, with them
    above FUSED_FROM entries through a fused backward that stores nothing but its inputs (below: plain ops)."""
    with torch.autocast(raw.device.type, enabled=False):
        finite_T = finite_T.to(raw.device)
        if (raw.requires_grad or inv_norm.requires_grad) and torch.is_grad_enabled() and not _exporting():
            if _fuses(raw):
                return _FusedPool.apply(raw, inv_norm, finite_T, float(lam))
            return _pool(_maps(raw, inv_norm), finite_T, lam)  # small: plain autograd ops are faster
        return _chunked_pool(raw, inv_norm, finite_T, lam)


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

    scores_follow_autocast = False  # training: the score maps' product in autocast's dtype (MultiLabelNet's setter)

    def __init__(self, in_dim: int, num_classes: int, T: float, lam: float):
        super().__init__()
        self.T = canonical_temperature(T)
        self.lam = float(lam)
        self.head = nn.Conv2d(in_dim, num_classes, kernel_size=1, bias=False)

    def _apply(self, fn, recurse=True):
        """After any conversion (``to(memory_format=torch.channels_last)`` included), the (K, d, 1, 1) weight
        keeps its plain strides: this head uses it as a matrix (``score_products``), so its gradient comes
        back with plain strides, and DDP warns and copies at every step when a gradient's strides differ
        from its weight's. For a 1x1 kernel both layouts are the same bytes."""
        super()._apply(fn, recurse)
        w = self.head.weight
        if w.stride() != torch.empty(w.shape, device="meta").stride():
            w.data = w.data.clone(memory_format=torch.contiguous_format)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw, inv_norm = score_products(x, [self.head.weight], self.scores_follow_autocast and self.training)
        finite = [] if math.isinf(self.T) else [self.T]
        return csra_pool(raw, inv_norm, torch.tensor(finite), self.lam)


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

    scores_follow_autocast = False  # training: the score maps' product in autocast's dtype (MultiLabelNet's setter)
    pooling_fused = False           # the last training forward's pooling went through _FusedPool

    def score_products(self, x: torch.Tensor, follow_autocast: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        """Every head's products (B, h*w, H, C) and inverse weight norms (H, C): ``score_products``."""
        return score_products(x, [h.head.weight for h in self.multi_head], follow_autocast)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw, inv_norm = self.score_products(x, self.scores_follow_autocast and self.training)  # (eval: float32)
        if self.training and torch.is_grad_enabled():
            self.pooling_fused = _fuses(raw)  # (the trainer says so after its first step)
        return csra_pool(raw, inv_norm, self.finite_temperatures, self.lam)

    def forward_with_maps(self, x: torch.Tensor) -> HeadMaps:
        """Logits plus, per head, the score maps (B, C, h, w) and the attention weights softmax(T s)."""
        raw, inv_norm = self.score_products(x)
        s = _maps(raw, inv_norm)
        maps = s.permute(0, 2, 3, 1).reshape(s.shape[0], s.shape[2], s.shape[3], *x.shape[2:])
        with torch.autocast(x.device.type, enabled=False):
            logits = _pool(s, self.finite_temperatures, self.lam)  # (the maps are made: pooled as they are)
        return HeadMaps(logits,
                        [maps[:, k] for k in range(maps.shape[1])],
                        [attention_maps(maps[:, k], T) for k, T in enumerate(self.temperatures)],
                        list(self.temperatures))


class GAPHead(nn.Linear):
    """Baseline: global average pooling + linear layer with bias (torchvision's classifier).

    It is an ``nn.Linear`` so that a model holding it as ``fc`` has torchvision's keys.
    With ``spatial_lam > 0`` it applies the training-free rule of the paper's Table 1:
    the linear layer at every location, score = mean + lam * max over locations.
    """

    temperatures = [INF]  # its one map is its score map, shown as it is (what T = infinity means for a map)

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
