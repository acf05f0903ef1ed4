"""Atomic file writes: a temporary file in the target folder, fsync, then rename over the target.
A reader (or a resumed run) sees the old file or the new one, never a half-written one."""
from __future__ import annotations

import contextlib
import json
import os


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w"):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json_atomic(obj: object, path: str) -> None:
    with atomic_write(path) as f:
        json.dump(obj, f)


def save_torch_atomic(obj: object, path: str) -> None:
    """torch.save through a temporary file and a rename."""
    import torch

    with atomic_write(path, "wb") as f:
        torch.save(obj, f)
