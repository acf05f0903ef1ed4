"""Batch prediction with an exported ONNX model: numpy, pillow and onnxruntime only (no torch).

    python predict_onnx.py --onnx csra.onnx --img_dir photos/ [--topk 5] [--thresholds thresholds.json] \
        [--output preds.json|preds.csv]

Class names, input size and normalisation come from the file's metadata (written by export.py); the
images are read and resized by the same code as demo.py's (``pipeline.images``: every kind of file gives
the same 8-bit RGB pixels), scaled to [0, 1] and normalised, so labels and scores equal demo.py's on the
same model to about 1e-6.
"""
from __future__ import annotations

import json
import sys
from typing import List

import numpy as np
from pipeline.errors import ConfigError, DataError
from pipeline.images import read_rgb, resize_square
from utils.entry import ScriptParser, run_main
from utils.predictions import class_thresholds, find_images, finish, label_record, prediction_line, thresholds_line

INSTALL = "pip install -r requirements-export.txt"


def load_session(path: str):
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError(f"onnxruntime is not installed; install the export extras: {INSTALL}") from None
    try:
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as e:  # missing file, not an ONNX model
        raise DataError(f"{path}: cannot load the ONNX model ({str(e).strip().splitlines()[0][:160]})") from None
    meta = session.get_modelmeta().custom_metadata_map
    missing = [k for k in ("classes", "input_size", "mean", "std") if k not in meta]
    if missing:
        raise DataError(f"{path}: no '{missing[0]}' in the model's metadata; export it with export.py")
    return session, meta


def prepare(path: str, size: int, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """The image as the model's input: the project's one reader and resize, then scaled and normalised."""
    img = resize_square(read_rgb(path), size)
    x = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    return ((x - mean) / std).transpose(2, 0, 1)


def run(argv=None) -> List[dict]:
    p = ScriptParser(description=__doc__)
    p.add_argument("--onnx", required=True, help="a model written by export.py --format onnx")
    p.add_argument("--img_dir", required=True, nargs="+", help="image folders and/or image files")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--thresholds", default=None, metavar="FILE", help="per-class thresholds (val.py --report)")
    p.add_argument("--topk", type=int, default=None, help="also list the K highest-scoring classes, whatever the threshold, in a column of their own "
                        "(the labels stay those above the threshold)")
    p.add_argument("--output", default=None, help="write predictions to PATH.json or PATH.csv")
    p.add_argument("--batch_size", type=int, default=16)
    a = p.parse_args(argv)
    if a.output and not a.output.endswith((".json", ".csv")):
        p.error("--output must end in .json or .csv")
    if a.batch_size < 1 or (a.topk is not None and a.topk < 1) or not 0 <= a.threshold <= 1:
        raise ConfigError("--batch_size and --topk must be positive, --threshold in [0, 1]")
    session, meta = load_session(a.onnx)
    names = json.loads(meta["classes"])
    size = int(meta["input_size"])
    mean = np.array(json.loads(meta["mean"]), dtype=np.float32)
    std = np.array(json.loads(meta["std"]), dtype=np.float32)
    cut = class_thresholds(a.thresholds, names) if a.thresholds else [a.threshold] * len(names)
    print(thresholds_line(a.thresholds, cut), file=sys.stderr)
    files, skipped = find_images(a.img_dir)
    for s in skipped:
        print(f"warning: skipped {s}: not an image file", file=sys.stderr)
    results = []
    for start in range(0, len(files), a.batch_size):
        batch, kept = [], []
        for f in files[start:start + a.batch_size]:
            try:
                batch.append(prepare(f, size, mean, std))
                kept.append(f)
            except DataError as e:
                print(f"warning: skipped {e}", file=sys.stderr)
        if not batch:
            continue
        logits = session.run(["logits"], {"images": np.stack(batch)})[0].astype(np.float64)
        probs = 1.0 / (1.0 + np.exp(-logits))
        for f, scores in zip(kept, probs):
            rec = label_record(f, names, scores.tolist(), cut, a.topk)
            print(prediction_line(rec))
            results.append(rec)
    finish(results, files, a.output, names)
    return results


if __name__ == "__main__":
    run_main(run)
