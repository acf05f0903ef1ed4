"""Atomic file writes: a temporary file in the target folder, fsync, then rename over the target.
A reader (or a resumed run) sees the old file or the new one, never a half-written one."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import threading

from pipeline.errors import CSRAError


class OutputError(CSRAError):
    """An output place that cannot be written: a file where a folder belongs, no permission, a full disk."""


def describe_os_error(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return "no space left on the disk"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "not writable (permission denied or read-only)"
    return e.strerror or str(e)


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


def _self_and_parents(path: str):
    path = os.path.abspath(path)
    while True:
        yield path
        parent = os.path.dirname(path)
        if parent == path:
            return
        path = parent


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w"):
    """Write to a temporary file beside ``path``, then rename it over ``path``. Errors of the file
    system (full disk, read-only folder) become one-line OutputErrors; the old file stays intact."""
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
