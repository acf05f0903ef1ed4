"""Export a CSRA model to ONNX or TorchScript, with its metadata and a parity check against PyTorch.

The exported graph takes ``images``, (N, 3, H, W) float32 already normalised as the model was trained
(the metadata states the normalisation's name, mean and std), and returns ``logits`` (N, C) and, with
``with_maps``, ``maps`` (N, C, h, w): the heatmap of one head (its attention softmax(T s), or the score
map for T = infinity and the GAP head). The batch dimension is dynamic; the input size is fixed.
"""
from __future__ import annotations

import json
import math
from typing import Dict, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.errors import ConfigError, CSRAError
from pipeline.models.runtime import normalization

FORMATS = ("onnx", "torchscript")
INSTALL = "pip install -r requirements-export.txt"
TOLERANCE = 1e-4
CHECK_BATCH = 3  # the parity check's batch: not the export's 2, so a batch size fixed in the file shows


class ExportError(CSRAError):
    """Export failed, or the exported model does not compute what the PyTorch model computes."""


class ExportModule(nn.Module):
    """The model as exported: logits, or (logits, maps of one head)."""

    def __init__(self, model: nn.Module, with_maps: bool = False, head: int = 0):
        super().__init__()
        self.model, self.with_maps, self.head_index = model.eval(), with_maps, head
        self.eval()

    def forward(self, images: torch.Tensor):
        if not self.with_maps:
            return self.model(images)
        out = self.model.forward_with_maps(images)
        return out.logits, out.heatmap(self.head_index)


def metadata(model, class_names: Sequence[str], with_maps: bool, head: int, normalize: str) -> Dict[str, str]:
    """What a deployment needs beside the graph, as strings (ONNX metadata_props, TorchScript extra file)."""
    mean, std = normalization(normalize)
    temps, lam = model.head.temperatures, model.head.lam
    return {
        "classes": json.dumps(list(class_names)),
        "model": model.model_name, "head": model.head_type, "num_heads": str(model.num_heads),
        "temperatures": json.dumps([("inf" if math.isinf(t) else t) for t in temps]),
        "lam": str(lam), "input_size": str(model.img_size),
        "normalize": normalize, "mean": json.dumps(list(mean)), "std": json.dumps(list(std)),
        "input": "images: float32 (N, 3, H, W), RGB pixels scaled to [0, 1], then (x - mean) / std",
        "outputs": "logits (N, C)" + (f"; maps (N, C, h, w) of head {head}" if with_maps else ""),
    }


def sample_inputs(model, batch: int = 4, seed: int = 0, normalize: str = "unit") -> torch.Tensor:
    """Real-looking inputs: smooth random images (low-resolution noise enlarged), normalised."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(batch, 3, 7, 7, generator=g)
    x = F.interpolate(low, size=(model.img_size, model.img_size), mode="bicubic", align_corners=False).clamp(0, 1)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in normalization(normalize))
    return (x - mean) / std


def _require(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise ConfigError(f"{module} is not installed; install the export extras: {INSTALL}") from None


def export_onnx(wrapper: ExportModule, example: torch.Tensor, path: str, meta: Dict[str, str]) -> None:
    _require("onnxscript")
    onnx = _require("onnx")
    names = ["logits", "maps"] if wrapper.with_maps else ["logits"]
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        torch.onnx.export(wrapper, (example,), path, input_names=["images"], output_names=names,
                          dynamic_shapes=({0: batch},), dynamo=True, external_data=False, verbose=False)
    except Exception as e:  # the exporter fails in many ways; the user needs the first line
        raise ExportError(f"ONNX export failed: {type(e).__name__}: {str(e).strip().splitlines()[0][:200]}") from None
    proto = onnx.load(path)
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(proto, path)


def export_torchscript(wrapper: ExportModule, example: torch.Tensor, path: str, meta: Dict[str, str]) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings: the parity check is the judge
        traced = torch.jit.trace(wrapper, example, check_trace=False)
        torch.jit.save(traced, path, _extra_files={"csra_metadata.json": json.dumps(meta)})


def run_exported(path: str, fmt: str, images: np.ndarray):
    """Outputs of the exported file on ``images`` (a list of numpy arrays)."""
    if fmt == "onnx":
        ort = _require("onnxruntime")
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return session.run(None, {"images": images})
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(path, map_location="cpu")
    with torch.no_grad():
        out = module(torch.from_numpy(images))
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


def read_metadata(path: str, fmt: str) -> Dict[str, str]:
    if fmt == "onnx":
        onnx = _require("onnx")
        return {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
    extra = {"csra_metadata.json": ""}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.load(path, map_location="cpu", _extra_files=extra)
    return json.loads(extra["csra_metadata.json"])


def export(model, class_names: Sequence[str], fmt: str, path: str, with_maps: bool = False, head: int = 0,
           normalize: str = "unit", tolerance: float = TOLERANCE) -> Dict[str, float]:
    """Export ``model`` (CPU, float32, eval) and check it: the exported file's logits (and maps) on
    real-looking inputs must match PyTorch's within ``tolerance``. Returns the largest differences."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)} (got {fmt!r})")
    model = model.float().cpu().eval()
    if not 0 <= head < len(model.head.temperatures):
        raise ConfigError(f"--heatmap_head must be below the number of heads ({len(model.head.temperatures)})")
    wrapper = ExportModule(model, with_maps, head)
    meta = metadata(model, class_names, with_maps, head, normalize)
    example = sample_inputs(model, batch=2, seed=1, normalize=normalize)
    (export_onnx if fmt == "onnx" else export_torchscript)(wrapper, example, path, meta)
    x = sample_inputs(model, batch=CHECK_BATCH, seed=2, normalize=normalize)  # another batch size: the batch is dynamic
    with torch.no_grad():
        want = wrapper(x)
    want = [t.numpy() for t in (want if isinstance(want, tuple) else (want,))]
    got = run_exported(path, fmt, x.numpy())
    diffs = {name: float(np.abs(g - w).max()) for name, g, w in zip(["logits", "maps"], got, want)}
    if diffs["logits"] > tolerance or not np.isfinite(list(diffs.values())).all():
        raise ExportError(f"the exported logits differ from PyTorch's by {diffs['logits']:.2e} "
                          f"(more than {tolerance:.0e}); the file is not trustworthy and was not written")
    return diffs
