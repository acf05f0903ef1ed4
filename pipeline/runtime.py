"""Where and how a model runs: device, mixed precision, memory format and input normalisation.

One ``Runtime`` is decided once per script (``resolve_runtime``) and handed to the training
step, evaluation and prediction, which all run the same code on CPU and CUDA.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Sequence, Tuple

import torch
import torch.nn as nn

from pipeline.backbones import get_backbone
from pipeline.errors import ConfigError

AMP_CHOICES = ("auto", "bf16", "fp16", "off")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    amp: str                      # "off", "bf16" or "fp16"
    channels_last: bool
    mean: Tuple[float, ...]
    std: Tuple[float, ...]

    def autocast(self):
        if self.amp == "off":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=AMP_DTYPES[self.amp])

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling, needed by float16 only (enabled=False otherwise, a no-op)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")

    def prepare_model(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def to_input(self, images: torch.Tensor) -> torch.Tensor:
        return to_model_input(images, self.mean, self.std, self.device, self.channels_last)

    def describe(self) -> str:
        return f"{self.device.type}, amp {self.amp}, {'channels-last' if self.channels_last else 'NCHW'}"


def to_model_input(images: torch.Tensor, mean: Sequence[float], std: Sequence[float], device: torch.device,
                   channels_last: bool = False) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float32 on ``device``, scaled to [0, 1], then normalised.
    (Workers send uint8: 4x fewer bytes between processes than float.)"""
    x = images.to(device, non_blocking=True).float().div_(255.0)
    if any(m != 0.0 for m in mean) or any(s != 1.0 for s in std):
        m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        s = torch.tensor(std, device=device).view(1, 3, 1, 1)
        x = (x - m) / s
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def resolve_runtime(device: torch.device, model_name: str, amp: str = "auto",
                    channels_last: bool = True) -> Runtime:
    """The one place that decides precision and memory format for a device and backbone."""
    if amp not in AMP_CHOICES:
        raise ConfigError(f"--amp must be one of {', '.join(AMP_CHOICES)} (got {amp!r})")
    spec = get_backbone(model_name)
    if device.type != "cuda":  # CPU runs in float32 NCHW
        amp, channels_last = "off", False
    elif amp == "auto":
        amp = "bf16"
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        amp = "fp16"
    return Runtime(device, amp, channels_last, tuple(spec.mean), tuple(spec.std))


def normalization_for(model_name: str) -> Tuple[Sequence[float], Sequence[float]]:
    """(mean, std) the backbone expects on [0, 1] pixels."""
    spec = get_backbone(model_name)
    return spec.mean, spec.std
