"""The training-state file (``train_state.pth``): everything ``main.py --resume`` needs, saved,
loaded and checked in one place.

Layout: ``{"format": FORMAT, "version": VERSION, "model", "optimizer", "scaler", "ema", "epoch",
"iter", "best", "args"}``. ``epoch`` counts finished epochs and ``iter`` the finished iterations of
the next one. Its ``"model"`` entry is a plain state dict in the authors' layout, so val.py and
demo.py load the file like any checkpoint.
"""
from __future__ import annotations

from typing import Optional

from pipeline.checkpoint import safe_load
from pipeline.errors import CheckpointError
from utils.fileio import save_torch_atomic

FORMAT = "csra-train-state"
VERSION = 1
REQUIRED = ("model", "optimizer", "epoch", "iter", "best")


def save_train_state(path: str, *, model, optimizer, scaler=None, ema=None, epoch: int, it: int, best: dict,
                     args: Optional[dict] = None) -> None:
    save_torch_atomic({
        "format": FORMAT, "version": VERSION, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "ema": ema.state_dict() if ema is not None else None,
        "epoch": epoch, "iter": it, "best": best,
        "args": {k: str(v) for k, v in (args or {}).items()},
    }, path)


def load_train_state(path: str) -> dict:
    """Read and check a training-state file (format tag, version, required entries)."""
    state = safe_load(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a training-state file written by main.py")
    version = state.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(f"{path}: training-state version {version!r}; this code reads up to {VERSION}")
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"{path}: training state lacks {', '.join(missing)}")
    return state


def restore_train_state(state: dict, *, model, optimizer, scaler=None, ema=None) -> None:
    """Put a loaded state back into the training objects."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    if ema is not None and state.get("ema") is not None:
        ema.load_state_dict(state["ema"])
