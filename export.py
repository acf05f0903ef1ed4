"""Export a trained CSRA model to ONNX or TorchScript, checked against PyTorch at export time.

    python export.py --load_from MODEL.pth --num_heads 1 --lam 0.1 --dataset voc07 --format onnx --out csra.onnx
    python export.py --load_from MODEL.pth --dataset demo --format torchscript --out csra.pt --with_maps

The file takes ``images`` (N, 3, H, W) float32, normalised as the metadata says, with a dynamic batch
and the fixed --img_size, and returns ``logits`` (N, C) (and, with --with_maps, one head's heatmaps
``maps`` (N, C, h, w)). Class names, temperatures, lam, input size and normalisation go into the file's
metadata. The exported model is run on real-looking inputs and compared with PyTorch: the largest
difference is printed, and export fails above 1e-4. ``predict_onnx.py`` runs an ONNX file without torch.
"""
from __future__ import annotations

import utils.process.openmp_env  # noqa: F401  (first: it configures OpenMP before torch loads it)

import argparse
import os
import shutil
import tempfile

from pipeline.models.model import load_for_inference
from pipeline.weights.export import TOLERANCE, ExportError, export
from utils.configuration.cli import describe_inference, model_kwargs, new_parser, parse_args, run_main
from utils.configuration.config import Config
from utils.output.fileio import OutputError, atomic_write, make_folder


def build_parser() -> argparse.ArgumentParser:
    return new_parser("Export a CSRA model to ONNX or TorchScript, with a parity check.", "E")


def run(args) -> dict:
    if os.path.exists(args.out) and not args.force:
        raise OutputError(f"{args.out}: exists; pass --force to replace it")
    cfg = Config.from_args(args)
    model, _ = load_for_inference(args.load_from, **model_kwargs(cfg.model), num_classes_from=cfg.num_cls_from)
    print(describe_inference(cfg, args.load_from))
    names = list(cfg.class_names)
    make_folder(os.path.dirname(os.path.abspath(args.out)))
    # exported in a private temporary folder, then copied into place atomically: the exporters' own
    # file writers abort the process on a full disk, and a failed export must leave nothing behind
    with tempfile.TemporaryDirectory() as work:
        tmp = os.path.join(work, "model.onnx" if args.format == "onnx" else "model.pt")
        try:
            diffs = export(model, names, args.format, tmp, with_maps=args.with_maps, head=args.heatmap_head,
                           normalize=cfg.model.normalize)
        except ExportError as e:
            raise ExportError(f"{args.out}: {e}") from None
        with open(tmp, "rb") as src, atomic_write(args.out, "wb") as dst:
            shutil.copyfileobj(src, dst)
    shown = ", ".join(f"{k} {v:.2e}" for k, v in diffs.items())
    m = cfg.model
    print(f"wrote {args.out} ({args.format}, {m.model}, {m.head} head, {m.num_cls} classes, "
          f"{m.img_size} px, input normalisation {m.normalize}); "
          f"parity with PyTorch: max |difference| {shown} (limit {TOLERANCE:.0e})")
    return diffs


def main(argv=None) -> None:
    run_main(lambda: run(parse_args(build_parser(), argv)))


if __name__ == "__main__":
    main()
