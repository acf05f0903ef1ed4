"""Atomic file writes: a temporary file in the target folder, fsync, then rename over the target.
A reader (or a resumed run) sees the old file or the new one, never a half-written one."""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import threading

# the atomic writer and its one-line errors are defined in the stand-alone predict_onnx.py (which writes
# its predictions with them); the writers every other output goes through are here
from predict_onnx import OutputError, atomic_write, describe_os_error, make_folder  # noqa: F401

TEMPORARY = re.compile(r"\..+\.tmp\d+")  # the name atomic_write gives its temporary: .<name>.tmp<pid>


def write_json_atomic(obj: object, path: str) -> None:
    with atomic_write(path) as f:
        json.dump(obj, f)


@contextlib.contextmanager
def interrupt_after():
    """Ctrl-C during the block takes effect when it ends: a save is never cut half-way (torch's zip
    writer would report the interruption as a write error). Main thread only; elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        raise KeyboardInterrupt


def save_torch_atomic(obj: object, path: str) -> None:
    """torch.save through a temporary file and a rename, never cut by Ctrl-C. torch reports a failed
    write (a full disk) as a RuntimeError from its zip writer; that becomes one OutputError line too."""
    import shutil

    import torch

    try:
        with interrupt_after(), atomic_write(path, "wb") as f:
            torch.save(obj, f)
    except RuntimeError as e:
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
        cause = "no space left on the disk" if free < (64 << 20) else str(e).strip().splitlines()[0][:120]
        raise OutputError(f"{path}: cannot write: {cause}") from None


def save_image_atomic(img, path: str, format: str = "PNG") -> None:
    """A PIL image written like every other output: temporary file, rename, one-line errors."""
    with atomic_write(path, "wb") as f:
        img.save(f, format=format)


def save_figure_atomic(fig, path: str, dpi: int = 100) -> None:
    """A matplotlib figure as PNG, written like every other output (``path`` is written as given)."""
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi)
