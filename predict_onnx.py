"""Batch prediction with an exported ONNX model, in one file that needs only numpy, pillow and onnxruntime.

    python predict_onnx.py --onnx csra.onnx --img_dir photos/ [--topk 5] [--thresholds thresholds.json] \\
        [--output preds.json|preds.csv]

Copy this file beside its .onnx on any machine: it imports nothing from this repository. Class names,
input size and normalisation come from the model's metadata (written by export.py); each image is read
as 8-bit RGB (16-bit, float, palette, alpha, CMYK and grayscale files included), resized to a square,
scaled to [0, 1] and normalised, so labels, scores and the JSON/CSV equal demo.py's on the same model.
"""
# This file is also the repository's bottom layer: what a prediction needs and the project shares (the
# root of the error family, JSON reading, the one image reader, atomic writes, the prediction records and
# their output, the scripts' parser and error wrapper) is defined here once, and pipeline/ and utils/
# import it from here (pipeline.errors, pipeline.jsonfile, pipeline.images, utils.output.fileio,
# utils.output.predictions, utils.configuration.entry), so demo.py and this file cannot drift apart.
from __future__ import annotations

import argparse
import contextlib
import csv
import errno
import json
import os
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

INSTALL = "pip install numpy pillow onnxruntime"


# --- errors: one line each --------------------------------------------------------------------------
class CSRAError(Exception):
    """Base of every error a user should see as one line: library code raises, only a script's main
    prints ``error: <message>`` and exits 1 (``run_main``)."""


class ConfigError(CSRAError, ValueError):
    """An option or combination of options that cannot work."""


class DataError(CSRAError):
    """Bad input: JSON, records, images."""


class OutputError(CSRAError):
    """An output place that cannot be written: a file where a folder belongs, no permission, a full disk."""


def read_json(path: str):
    """A JSON file (UTF-8, a byte-order mark accepted) with one-line errors naming it."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


# --- the one image reader -----------------------------------------------------------------------------
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}
Box = Tuple[float, float, float, float]


def to_rgb8(img: Image.Image, where: str) -> Image.Image:
    """An RGB 8-bit image. Palette, grayscale, alpha (dropped) and CMYK through PIL's ``convert("RGB")``;
    16-bit, 32-bit integer and float images scaled to 8 bits (PIL would clip them to a constant image);
    values of a wide image that fit no known range are refused with one line."""
    if img.mode not in WIDE_MODES:
        return img.convert("RGB")
    a = np.asarray(img)
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise DataError(f"{where}: float image holds NaN or infinite values")
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if lo < 0:
        raise DataError(f"{where}: {img.mode} image has negative values ({lo}); cannot map it to 8 bits")
    if a.dtype.kind == "f" and hi <= 1.0:
        scale = 255.0
    elif hi <= 255 and a.dtype.kind != "u":
        scale = 1.0
    elif hi <= 65535:
        scale = 255.0 / 65535.0
    else:
        raise DataError(f"{where}: {img.mode} image values reach {hi}; cannot map them to 8 bits")
    gray = np.clip(np.rint(a.astype(np.float64) * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, "L").convert("RGB")


def read_rgb(path: str, where: Optional[str] = None, draft_side: Optional[int] = None) -> Image.Image:
    """The image at ``path`` as 8-bit RGB. ``draft_side``: let a JPEG decode at a reduced scale that
    still covers that many pixels (faster; training only). Errors name ``where`` (default: the path)."""
    where = where or path
    try:
        with Image.open(path) as im:
            if draft_side:
                im.draft("RGB", (draft_side, draft_side))
            return to_rgb8(im, where)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{where}: cannot read image: {e}") from None


def resize_square(img: Image.Image, size: int, box: Optional[Box] = None) -> Image.Image:
    """``size`` x ``size``, bilinear (what torchvision's Resize does to a PIL image); ``box`` crops first.
    An empty image (a person box of zero width or height) becomes black, as PIL makes it."""
    if img.width == 0 or img.height == 0:
        return Image.new("RGB", (size, size))
    return img.resize((size, size), Image.BILINEAR, box=box)


# --- writing files: a temporary file and a rename, one-line errors ----------------------------------
def describe_os_error(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return "no space left on the disk"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "not writable (permission denied or read-only)"
    return e.strerror or str(e)


def _self_and_parents(path: str):
    path = os.path.abspath(path)
    while True:
        yield path
        parent = os.path.dirname(path)
        if parent == path:
            return
        path = parent


def make_folder(path: str) -> str:
    """os.makedirs with one-line errors naming the path and the cause."""
    blocked = next((p for p in _self_and_parents(path) if os.path.exists(p) and not os.path.isdir(p)), None)
    if blocked:
        raise OutputError(f"{blocked}: is a file, not a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{path}: cannot create the folder: {describe_os_error(e)}") from None
    return path


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w"):
    """Write to a temporary file beside ``path``, then rename it over ``path``: a reader sees the old file
    or the new one, never half of one. A full disk or a read-only folder is one OutputError line, and
    the old file stays intact."""
    folder = make_folder(os.path.dirname(os.path.abspath(path)))
    if os.path.isdir(path):
        raise OutputError(f"{path}: is a folder, cannot write a file there")
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise OutputError(f"{path}: cannot write: {describe_os_error(e)}") from None
    finally:
        if os.path.exists(tmp):
            try:
                os.remove(tmp)
            except OSError:
                pass


# --- predictions on a folder of images: shared with demo.py -------------------------------------------
def list_images(paths: Sequence[str]) -> Tuple[List[str], List[Tuple[str, str]]]:
    """Files to try (folders expanded, sorted, not searched below) and (path, why) of each one skipped."""
    files, skipped = [], []
    for p in paths:
        if os.path.isdir(p):
            for name in sorted(os.listdir(p)):
                full = os.path.join(p, name)
                if os.path.isdir(full):
                    skipped.append((full, f"a folder inside {p} (its images are not read: name it too)"))
                elif os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                    files.append(full)
                elif os.path.isfile(full):
                    skipped.append((full, "not an image file"))
        elif os.path.isfile(p):
            files.append(p)
        else:
            skipped.append((p, "not a file or folder"))
    return files, skipped


def find_images(paths: Sequence[str]) -> Tuple[List[str], List[str]]:
    """``list_images`` with one-line errors for a missing path or no image at all."""
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise DataError(f"{missing[0]}: no such file or folder")
    files, skipped = list_images(paths)
    if not files:
        folders = sum(os.path.isdir(path) for path, _ in skipped)
        below = f"; {folders} folder{'s' if folders > 1 else ''} inside not searched: name them" if folders else ""
        raise DataError(f"no image files in {', '.join(paths)} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}"
                        f"{below})")
    return files, skipped


def read_class_thresholds(path: str, names) -> list:
    """Per-class thresholds from a thresholds.json (val.py --report), in the order of ``names``."""
    data = read_json(path)
    table = data.get("thresholds") if isinstance(data, dict) else None
    if not isinstance(table, dict):
        raise DataError(f"{path}: not a thresholds file (no 'thresholds' object)")
    missing = [n for n in names if n not in table]
    if missing:
        raise DataError(f"{path}: no threshold for class {missing[0]!r}")
    bad = [n for n in names if not isinstance(table[n], (int, float)) or not 0 <= table[n] <= 1]
    if bad:
        raise DataError(f"{path}: threshold of {bad[0]!r} must be a number in [0, 1]")
    return [float(table[n]) for n in names]


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Scores from logits, in float64 (demo.py uses this too): float32's sigmoid is exactly 1.0 from a logit of
    about 17 (float64's from about 37)."""
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def label_record(image: str, names: Sequence[str], scores: Sequence[float], cut: Sequence[float],
                 topk: Optional[int] = None, *, logits: Sequence[float]) -> dict:
    """One image's prediction: the labels at or above their thresholds, highest first, and with ``topk``
    the k highest-scoring classes whatever the thresholds, in a list of their own. Ordered by ``logits``: the
    scores' order where they differ, and a real one where a confident model's scores are all 1.0."""
    order = sorted(range(len(scores)), key=lambda c: -logits[c])
    entry = lambda c: {"class": names[c], "score": round(float(scores[c]), 6)}  # noqa: E731
    rec = {"image": image, "labels": [entry(c) for c in order if scores[c] >= cut[c]]}
    if topk:
        rec["top"] = [entry(c) for c in order[:topk]]
    rec["scores"] = {n: round(float(s), 6) for n, s in zip(names, scores)}
    return rec


def _listed(entries) -> str:
    return ", ".join(f"{x['class']} ({x['score']:.3f})" for x in entries)


def prediction_line(rec: dict) -> str:
    text = f"{rec['image']}: " + (_listed(rec["labels"]) or "(nothing above threshold)")
    if "top" in rec:
        text += f"; top {len(rec['top'])}: {_listed(rec['top'])}"
    return text


def thresholds_line(path: Optional[str], cut: Sequence[float]) -> str:
    """The header line that says which thresholds the labels use."""
    if path:
        return f"labels: score >= each class's threshold from {path} ({min(cut):.3f} to {max(cut):.3f})"
    return f"labels: score >= {cut[0]:g} for every class"


def write_output(path: str, results: list, names: list) -> None:
    if path.endswith(".json"):
        with atomic_write(path) as f:
            json.dump(results, f, indent=1)
        return
    top = any("top" in r for r in results)
    with atomic_write(path) as f:
        w = csv.writer(f)
        w.writerow(["image", "labels"] + (["top"] if top else []) + names)
        for r in results:
            listed = [";".join(f"{x['class']}:{x['score']:.6g}" for x in r["top"])] if top else []
            w.writerow([r["image"], ";".join(x["class"] for x in r["labels"])] + listed + [r["scores"][n] for n in names])


def finish(results: list, files: Sequence[str], output: Optional[str], names: Sequence[str]) -> None:
    """Stop when no image could be read; else write the --output file, if one was asked for."""
    if not results:
        raise DataError(f"none of the {len(files)} image files could be read")
    if output:
        write_output(output, results, names)
        print(f"wrote {output} ({len(results)} images)")


# --- the scripts' command line and error wrapper --------------------------------------------------------
class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows '(default: X)' only where there is a literal default; rules for the rest are in the help."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "%(default)" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class ScriptParser(argparse.ArgumentParser):
    """Every entry script's parser: flags are never abbreviated (``--total`` is not ``--total_epoch``: a
    resumed run compares the flags typed, and an abbreviation would slip past it), and a bad command
    line is one line, 'error: ...', naming the flag, and exit 2 (``--help`` shows the options)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {os.path.basename(self.prog)} --help)\n")


def run_main(main: Callable[[], object], interrupted_hint: Union[str, Callable[[], str]] = "",
             error_line: Callable[[BaseException], str] = str) -> None:
    """Run a script's main: every CSRAError becomes 'error: <error_line(e)>' and exit 1; Ctrl-C becomes
    'interrupted; <hint>' and exit 130 (the hint may be a function, asked at that moment). A closed
    output pipe (``| head``) ends quietly."""
    try:
        main()
        sys.stdout.flush()  # here, not at exit: a closed pipe is then caught below
    except CSRAError as e:
        sys.exit(f"error: {error_line(e)}")
    except KeyboardInterrupt:
        hint = interrupted_hint() if callable(interrupted_hint) else interrupted_hint
        print("interrupted" + (f"; {hint}" if hint else ""), file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # the output went to a reader that stopped (`... | head`): not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # (so Python's own flush at exit does not fail again)
        sys.exit(0)


# --- this script ------------------------------------------------------------------------------------------
# Its options. Those demo.py takes too are rows of the option table (utils/configuration/options.py), which
# this file cannot import: tests/test_export.py holds these settings and checks equal to those rows.
OPTIONS: Dict[str, dict] = {
    "onnx": dict(required=True, help="a model written by export.py --format onnx"),
    "img_dir": dict(required=True, nargs="+", help="image folders and/or image files"),
    "threshold": dict(type=float, default=0.5, help="a class is a label when its score is at or above this"),
    "thresholds": dict(default=None, metavar="FILE", help="per-class thresholds (thresholds.json from val.py "
                       "--report) instead of --threshold"),
    "topk": dict(type=int, default=None, help="also list the K highest-scoring classes, whatever the threshold, "
                 "in a column of their own (the labels stay those above the threshold)"),
    "output": dict(default=None, help="write predictions to PATH.json or PATH.csv"),
    "batch_size": dict(type=int, default=16, help="images per forward pass"),
}
CHECKS = {"threshold": (lambda v: 0 <= v <= 1, "in [0, 1]"), "topk": (lambda v: v > 0, "a positive integer"),
          "batch_size": (lambda v: v > 0, "a positive integer")}


class HelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultsHelpFormatter):
    """This docstring as written, and the options' literal defaults."""


def get_args(argv=None) -> argparse.Namespace:
    p = ScriptParser(description=__doc__, formatter_class=HelpFormatter)
    for name, settings in OPTIONS.items():
        p.add_argument(f"--{name}", **settings)
    a = p.parse_args(argv)
    if a.output and not a.output.endswith((".json", ".csv")):
        p.error("--output must end in .json or .csv")
    for flag, (ok, what) in CHECKS.items():
        value = getattr(a, flag)
        if value is not None and not ok(value):
            raise ConfigError(f"--{flag} must be {what} (got {value})")
    return a


def load_session(path: str):
    """The ONNX Runtime session and the model's metadata, with one-line errors."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError(f"onnxruntime is not installed; {INSTALL}") from None
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
    """The image as the model's input: the one reader and resize, then scaled to [0, 1] and normalised."""
    img = resize_square(read_rgb(path), size)
    x = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    return ((x - mean) / std).transpose(2, 0, 1)


def predict(session, meta: Dict[str, str], files: Sequence[str], cut: Sequence[float], topk: Optional[int],
            batch_size: int) -> List[dict]:
    """One record per readable image (each printed as it comes); unreadable ones are skipped with a warning."""
    names = json.loads(meta["classes"])
    size = int(meta["input_size"])
    mean, std = (np.array(json.loads(meta[k]), dtype=np.float32) for k in ("mean", "std"))
    results = []
    for start in range(0, len(files), batch_size):
        batch, kept = [], []
        for f in files[start:start + batch_size]:
            try:
                batch.append(prepare(f, size, mean, std))
                kept.append(f)
            except DataError as e:
                print(f"warning: skipped {e}", file=sys.stderr)
        if not batch:
            continue
        logits = session.run(["logits"], {"images": np.stack(batch)})[0]
        for f, scores, row in zip(kept, probabilities(logits), logits):
            rec = label_record(f, names, scores.tolist(), cut, topk, logits=row.tolist())
            print(prediction_line(rec))
            results.append(rec)
    return results


def run(argv=None) -> List[dict]:
    a = get_args(argv)
    session, meta = load_session(a.onnx)
    names = json.loads(meta["classes"])
    if a.topk is not None and a.topk > len(names):
        raise ConfigError(f"--topk is {a.topk} but there are only {len(names)} classes")
    cut = read_class_thresholds(a.thresholds, names) if a.thresholds else [a.threshold] * len(names)
    print(thresholds_line(a.thresholds, cut), file=sys.stderr)
    files, skipped = find_images(a.img_dir)
    for path, why in skipped:
        print(f"warning: skipped {path}: {why}", file=sys.stderr)
    results = predict(session, meta, files, cut, a.topk, a.batch_size)
    finish(results, files, a.output, names)
    return results


if __name__ == "__main__":
    run_main(run)
