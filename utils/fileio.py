"""Atomic file writes: a temporary file in the target folder, fsync, then rename over the target.
A reader (or a resumed run) sees the old file or the new one, never a half-written one."""
from __future__ import annotations

import contextlib
import errno
import json
import os

from pipeline.errors import CSRAError


class OutputError(CSRAError):
    """An output place that cannot be written: a file where a folder belongs, no permission, a full disk."""


def _cause(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return "no space left on the disk"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "not writable (permission denied or read-only)"
    return e.strerror or str(e)


def make_folder(path: str) -> str:
    """os.makedirs with one-line errors naming the path and the cause."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputError(f"{path}: is a file, not a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{path}: cannot create the folder: {_cause(e)}") from None
    return path


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
        raise OutputError(f"{path}: cannot write: {_cause(e)}") from None
    finally:
        if os.path.exists(tmp):
            try:
                os.remove(tmp)
            except OSError:
                pass


def write_json_atomic(obj: object, path: str) -> None:
    with atomic_write(path) as f:
        json.dump(obj, f)


def save_torch_atomic(obj: object, path: str) -> None:
    """torch.save through a temporary file and a rename. torch reports a failed write (a full disk)
    as a RuntimeError from its zip writer; that becomes one OutputError line too."""
    import shutil

    import torch

    try:
        with atomic_write(path, "wb") as f:
            torch.save(obj, f)
    except RuntimeError as e:
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
        cause = "no space left on the disk" if free < (64 << 20) else str(e).strip().splitlines()[0][:120]
        raise OutputError(f"{path}: cannot write: {cause}") from None
