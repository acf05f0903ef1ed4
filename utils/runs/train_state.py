"""The training-state file (``train_state.pth``): everything ``main.py --resume`` needs, saved,
loaded and checked in one place.

Layout: ``{"format": FORMAT, "version": VERSION, "model", "optimizer", "scaler", "ema", "epoch",
"iter", "best", "epoch_files", "args"}``. ``epoch`` counts finished epochs and ``iter`` the finished
iterations of the next one; ``epoch_files`` lists the epochs whose checkpoint this run wrote and keeps
(``--keep_epochs`` removes only those). Its ``"model"`` entry is a plain state dict in the authors' layout, so val.py and
demo.py load the file like any checkpoint.
"""
from __future__ import annotations

import os
from typing import Any, List, NamedTuple, Optional

from pipeline.errors import CheckpointError
from pipeline.models.runtime import bf16_is_emulated, precision_name
from pipeline.weights.checkpoint import safe_load
from utils.configuration.options import RUN_DEFINING
from utils.output.fileio import TEMPORARY, save_torch_atomic
from utils.runs.run_record import RECORD_FILE, read_record

FORMAT = "csra-train-state"
VERSION = 1
REQUIRED = ("model", "optimizer", "epoch", "iter", "best")


class TrainedObjects(NamedTuple):
    """What a training state saves and restores the state of."""
    model: Any
    optimizer: Any
    scaler: Any = None
    ema: Any = None


def save_train_state(path: str, objects: TrainedObjects, *, progress: dict, args: Optional[dict] = None,
                     run_id: Optional[str] = None, runtime: Optional[dict] = None) -> None:
    """``progress``: ``epoch`` (finished epochs), ``iter`` (finished iterations of the next one), ``best``,
    ``epoch_files`` (the epochs whose epoch_<i>.pth this run wrote and keeps); ``runtime``: what the steps up
    to this state ran in (``Runtime.as_dict``), for the resume note."""
    scaler, ema = objects.scaler, objects.ema
    save_torch_atomic({
        "format": FORMAT, "version": VERSION, "run_id": run_id, "runtime": runtime,
        "model": objects.model.state_dict(), "optimizer": objects.optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "ema": ema.state_dict() if ema is not None else None,
        "epoch": progress["epoch"], "iter": progress["iter"], "best": progress["best"],
        "epoch_files": list(progress.get("epoch_files", [])),
        "args": {k: str(v) for k, v in (args or {}).items()},
    }, path)


def load_train_state(path: str, mmap: bool = False) -> dict:
    """Read and check a training-state file (format tag, version, required entries)."""
    state = safe_load(path, mmap=mmap)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a training-state file written by main.py")
    version = state.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(f"{path}: training-state version {version!r}; this code reads up to {VERSION}")
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"{path}: training state lacks {', '.join(missing)}")
    return state


def restore_train_state(state: dict, path: str, objects: TrainedObjects) -> None:
    """Put a loaded state back into the training objects; one line when it does not fit them."""
    scaler, ema = objects.scaler, objects.ema
    try:
        objects.model.load_state_dict(state["model"])
        objects.optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: does not fit this run's model and optimizer ({first[:160]})") from None


def check_state_identity(state: dict, path: str, recorded: dict, args_path: str) -> None:
    """A training state resumes only the run that wrote it: its run id must be the run record's; a state
    from before run ids must agree with the record on every run-defining option."""
    mine, theirs = recorded.get("run_id"), state.get("run_id")
    if mine and theirs:
        if mine != theirs:
            raise CheckpointError(f"--resume: {path} belongs to run {theirs}, but {args_path} records run {mine}; "
                                  "a training state resumes only the run that wrote it")
        return
    saved = state.get("args") or {}
    for key in RUN_DEFINING:
        if key in saved and key in recorded and saved[key] != str(recorded[key]):
            raise CheckpointError(f"--resume: {path} was written by a run with --{key} {saved[key]}, but {args_path} "
                                  f"records {recorded[key]}; a training state resumes only the run that wrote it")


# --- the files --resume reads ----------------------------------------------------------------------------
STATE_FILE = "train_state.pth"


def read_recorded_args(folder: str) -> dict:
    """The record of a run folder that --resume continues (utils.runs.run_record.read_record); an error when
    the folder holds none of main.py's."""
    record = read_record(folder)
    if record is None:
        raise CheckpointError(f"{os.path.join(folder, RECORD_FILE)}: missing or not main.py's; this folder does "
                              "not hold a run of main.py")
    return record


def precision_change_note(trained: Optional[dict], runtime, amp_flag: str) -> str:
    """One line when a resumed run goes on in another precision than its last steps used ('' if the same,
    unknown, or typed). ``trained``: the state's runtime (utils.runs.resume fills it from the run record for
    states written before states recorded it); ``amp_flag``: --amp now."""
    then = (trained or {}).get("amp")
    if amp_flag != "auto" or then is None or then == runtime.amp:
        return ""
    now = precision_name(runtime.amp)
    slow = " (emulated on this CPU: several times slower)" if bf16_is_emulated(runtime.device, then) else ""
    return (f"note: this run's last steps trained in {precision_name(then)} on {trained.get('device', '?')}; here "
            f"--amp auto picks {now}, so it goes on in {now} (not bit-equal to an uninterrupted run); "
            f"add --amp {then} to keep {precision_name(then)}{slow}")


def remove_stale_temporaries(folder: str) -> List[str]:
    """Temporary files left by writes interrupted in this run folder (see utils.output.fileio.atomic_write)."""
    removed = []
    for name in os.listdir(folder):
        if TEMPORARY.fullmatch(name):
            os.remove(os.path.join(folder, name))
            removed.append(name)
    return removed
