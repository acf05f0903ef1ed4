"""Where and how a model runs: device, mixed precision, memory format and input normalisation.

One ``Runtime`` is decided once per script (``resolve_runtime``) and handed to the training
step, evaluation and prediction, which all run the same code on CPU and CUDA.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Sequence, Tuple

import torch
import torch.nn as nn

from pipeline.errors import ConfigError
from pipeline.models.backbones import HALF, IMAGENET, UNIT_RANGE, Normalization, get_backbone

AMP_CHOICES = ("auto", "bf16", "fp16", "off")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# --normalize: (mean, std) applied to pixels scaled to [0, 1]; any other as "m1,m2,m3/s1,s2,s3"
CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
NORMALIZATIONS = {"unit": UNIT_RANGE, "half": HALF, "imagenet": IMAGENET, "clip": CLIP}
NORMALIZE_HELP = ("unit = none, half = mean = std = 0.5, imagenet = ImageNet mean/std, clip = OpenAI CLIP's, or "
                  "'m1,m2,m3/s1,s2,s3'")


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    amp: str                      # "off", "bf16" or "fp16"
    channels_last: bool
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    normalize: str = "unit"       # (mean, std) by name in NORMALIZATIONS, or spelled out (see normalization)

    def autocast(self):
        if self.amp == "off":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=AMP_DTYPES[self.amp])

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling, needed by float16 only (enabled=False otherwise, a no-op)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")

    def prepare_model(self, model: nn.Module, train: bool = False) -> nn.Module:
        """The model on the device in the memory format. For training on CUDA (``train``) also lets cuDNN
        time its convolution algorithms once per input shape (``cudnn.benchmark``, as torchvision's reference
        training does): the sizes are fixed, and CUDA runs are not bit-exact on resume anyway. Evaluation
        scripts leave it off (torchvision turns it off for --test-only: scores could vary between runs)."""
        if self.device.type == "cuda":
            set_tf32_policy()
            if train:
                torch.backends.cudnn.benchmark = True
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def to_input(self, images: torch.Tensor) -> torch.Tensor:
        return to_model_input(images, self.mean, self.std, self.device, self.channels_last)

    def describe(self) -> str:
        tf32 = f", {TF32_POLICY}" if self.device.type == "cuda" else ""
        return (f"{self.device.type}, {precision_name(self.amp)}{tf32}, "
                f"{'channels-last' if self.channels_last else 'NCHW'}, input normalisation {self.normalize}")

    def as_dict(self) -> dict:
        out = {"device": str(self.device), "amp": self.amp, "channels_last": self.channels_last,
               "normalize": self.normalize}
        if self.device.type == "cuda":
            out["tf32"] = {"matmul": TF32_MATMUL, "convolution": TF32_CONVOLUTION}
        return out


# CUDA's float32 policy, set on purpose (PyTorch's own defaults, made explicit and recorded): convolutions may
# use TF32 (cuDNN's default since PyTorch 1.7, which every float32 training on Ampere and later already gets),
# matrix products may not: --amp off asks for float32, and the matmuls of a float32 run are the heads' (their
# norms, softmax and sums are float32 by design). The training precision (--amp auto) is bf16 on such GPUs.
TF32_MATMUL, TF32_CONVOLUTION = False, True
TF32_POLICY = "float32 matmuls without TF32, convolutions with"


def set_tf32_policy() -> None:
    torch.backends.cuda.matmul.allow_tf32 = TF32_MATMUL
    torch.backends.cudnn.allow_tf32 = TF32_CONVOLUTION


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


def precision_name(amp: str) -> str:
    """How logs name an --amp value: 'float32' or '<dtype> autocast'."""
    return "float32" if amp == "off" else f"{amp} autocast"


def bf16_is_emulated(device: torch.device, amp: str) -> bool:
    """Whether ``amp`` on ``device`` is bfloat16 on a CPU that only emulates it (several times slower)."""
    return device.type == "cpu" and amp == "bf16" and not cpu_has_native_bf16()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 / AMX), as oneDNN reports it."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def normalization(name: str) -> Normalization:
    """(mean, std) of a --normalize value: a name, or three means and three deviations 'm,m,m/s,s,s'."""
    if name in NORMALIZATIONS:
        return NORMALIZATIONS[name]
    try:
        mean, std = (tuple(float(v) for v in half.split(",")) for half in str(name).split("/"))
        if len(mean) == len(std) == 3 and all(s > 0 for s in std) and all(math.isfinite(v) for v in mean + std):
            return mean, std
    except ValueError:
        pass
    raise ConfigError(f"--normalize must be one of {', '.join(NORMALIZATIONS)} or 'm1,m2,m3/s1,s2,s3' with "
                      f"positive deviations (got {name!r})")


def normalization_name(ms: Normalization) -> str:
    """The --normalize value of (mean, std): its name, else spelled out."""
    for name, known in NORMALIZATIONS.items():
        if all(abs(a - b) < 1e-6 for a, b in zip(ms[0] + ms[1], known[0] + known[1])):
            return name
    return ",".join(f"{v:g}" for v in ms[0]) + "/" + ",".join(f"{v:g}" for v in ms[1])


def default_normalize(model_name: str, dataset_rule: str) -> str:
    """The authors' rule (by dataset, ``dataset_rule``) for their backbones, so their checkpoints keep
    their numbers; every other backbone's weights' own normalisation."""
    spec = get_backbone(model_name)
    return dataset_rule if spec.authors else normalization_name(spec.normalization)


def legacy_normalize(model_name: str) -> str:
    """What runs trained here before normalisation was recorded used: the backbone's own convention
    (ViTs mean = std = 0.5, the rest [0, 1])."""
    return normalization_name(get_backbone(model_name).normalization)


def resolve_runtime(device: torch.device, model_name: str, amp: str = "auto",
                    channels_last: bool = True, normalize: str = "unit") -> Runtime:
    """The one place that decides precision and memory format for a device and backbone.

    ``auto``: on CUDA bf16 where the GPU supports it, else fp16 (with loss scaling); on CPU bf16
    where the CPU computes it natively, else off. An explicit choice is honoured on any device
    that can run it. Channels-last is used on every device unless ``channels_last`` is False
    (--no_channels_last): measured never slower than NCHW (bench_train.py: CUDA; float32 and bf16 on a
    native-bf16 CPU, x1.13-1.26 in float32; float32 on an AVX2 CPU, x1.09-1.22 for small_cnn).
    """
    mean, std = normalization(normalize)
    if amp not in AMP_CHOICES:
        raise ConfigError(f"--amp must be one of {', '.join(AMP_CHOICES)} (got {amp!r})")
    get_backbone(model_name)  # an unknown --model is reported here too
    cuda = device.type == "cuda"
    if cuda:
        native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        if amp == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=True):
            raise ConfigError(f"--amp bf16: {torch.cuda.get_device_name(device)} cannot compute bfloat16; "
                              "use --amp fp16 or --amp auto")
    elif device.type == "cpu":
        native_bf16 = cpu_has_native_bf16()
    else:
        raise ConfigError(f"device {device.type} is not supported; CUDA or CPU")
    if amp == "auto":
        amp = "bf16" if native_bf16 else ("fp16" if cuda else "off")
    return Runtime(device, amp, channels_last, tuple(mean), tuple(std), normalize)


def runtime_warning(runtime: Runtime) -> str:
    """A note for choices that run but slowly on this machine ('' if none)."""
    if runtime.device.type == "cpu" and runtime.amp == "fp16":
        return "note: --amp fp16 on CPU runs, but much slower than bf16 or off"
    if bf16_is_emulated(runtime.device, runtime.amp):
        return ("warning: this CPU has no native bfloat16 (no AVX512-BF16/AMX): --amp bf16 is emulated, several "
                "times slower than float32 (bench_train.py on a 2-core AVX2 CPU: 0.14-0.19x for small_cnn); "
                "--amp auto or off is faster")
    return ""
