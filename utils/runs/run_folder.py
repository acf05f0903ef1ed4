"""A training run's folder: its name (never an existing run: ``_2``, ``_3``, ...), its lock, its record
(``args.json``), its training state and the truncation of its logs on resume. main.py and the trainer
reach the folder's files only through here (what --resume reads and checks: utils.runs.resume)."""
from __future__ import annotations

import contextlib
import json
import os
import re
import uuid
from typing import List, Optional

from utils.output.fileio import OutputError, atomic_write, make_folder
from utils.process import distributed as du
from utils.runs.run_lock import RunLock, RunLockedError
from utils.runs.run_record import RECORD_FILE, RECORD_VERSION
from utils.runs.train_state import STATE_FILE, read_recorded_args

LOG_FILE = "log.jsonl"
STEPS_FILE = "steps.csv"
BEST_FILE = "best.pth"
EPOCH_FILE = re.compile(r"epoch_(\d+)\.pth")  # a checkpoint after each epoch (RunFolder.epoch_path)
BEST_PENDING = re.compile(r"\.best_epoch(\d+)\.pth\.pending")  # an epoch's new best weights, until the
#                                                                    training state that names them is saved
THRESHOLDS_FILE = "thresholds.json"  # with a validation set: per-class thresholds chosen on it


class RunFolder:
    """One run folder: its files, its lock (rank 0 holds it for every rank until ``release``) and its record."""

    def __init__(self, path: str, run_id: Optional[str] = None):
        self.path = path
        self.run_id = run_id  # a training state carries it: it resumes only this run (None: a run from before ids)
        self._lock: Optional[RunLock] = None

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def state_path(self) -> str:
        return self.file(STATE_FILE)

    def epoch_path(self, epoch: int) -> str:
        return self.file(f"epoch_{epoch}.pth")

    def keep_recent_epochs(self, written: List[int], epoch: int, keep: Optional[int]) -> List[int]:
        """--keep_epochs N: the epochs this run wrote a checkpoint of (``written``, and ``epoch`` now), less
        those before the last N, whose files are removed (best.pth and the training state are other files); a
        file this run did not write is never touched. Returns the epochs kept."""
        written = sorted(set(written) | {epoch})
        if keep is None:
            return written
        for old in written[:-keep]:
            with contextlib.suppress(FileNotFoundError):  # (removed before a kill, listed in the last state)
                os.remove(self.epoch_path(old))
        return written[-keep:]

    def pending_best(self, epoch: int) -> str:
        """Where epoch ``epoch``'s new best weights wait for the training state that names them (BEST_PENDING)."""
        return self.file(f".best_epoch{epoch}.pth.pending")

    def settle_best(self, named: Optional[int]) -> None:
        """Epoch ``named``'s pending best weights become best.pth (a training state naming them was saved); any
        other epoch's are removed: a run killed before its state named them never resumes with a best.pth of
        another epoch than its state's best."""
        for name in os.listdir(self.path):
            found = BEST_PENDING.fullmatch(name)
            if found and int(found.group(1)) == named:
                os.replace(self.file(name), self.file(BEST_FILE))
            elif found:
                os.remove(self.file(name))

    def last_good(self) -> str:
        """The line a diverged run ends with: the last epoch checkpoint kept, or that there is none."""
        epochs = sorted(int(m.group(1)) for m in map(EPOCH_FILE.fullmatch, os.listdir(self.path)) if m) \
            if os.path.isdir(self.path) else []
        return f"last good checkpoint kept: {self.epoch_path(epochs[-1])}" if epochs else \
            "no checkpoint had been saved yet"

    # --- the lock ----------------------------------------------------------------------------------
    def lock(self) -> None:
        """Rank 0 takes the folder's lock (the other ranks share it); ``release`` ends it."""
        if du.is_main():
            lock = RunLock(self.path)
            note = lock.acquire()
            self._lock = lock
            if note:
                print(note)

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # --- the record --------------------------------------------------------------------------------
    def read_record(self) -> dict:
        return read_recorded_args(self.path)

    def write_record(self, record: dict) -> None:
        """The one writer of the record (in the current schema: RECORD_VERSION)."""
        with atomic_write(self.file(RECORD_FILE)) as f:
            json.dump(dict(record, record_version=RECORD_VERSION), f, indent=1, default=str)


def run_base(output_dir: Optional[str], model: str) -> str:
    """checkpoint/<model> or --output_dir, without a trailing slash (so no run is nested in another)."""
    return os.path.normpath(output_dir or os.path.join("checkpoint", model))


def new_run_path(output_dir: Optional[str], model: str) -> str:
    """A fresh folder for a new run: an existing run is never overwritten; a new one gets a suffix."""
    base = run_base(output_dir, model)
    folder, n = base, 1
    while os.path.exists(folder) and (not os.path.isdir(folder) or os.listdir(folder)):
        if not os.path.isdir(folder) and n == 1 and output_dir:
            raise OutputError(f"--output_dir {folder}: is a file, not a folder")
        n += 1
        folder = f"{base}_{n}"
    if folder != base:
        print(f"note: {base} already holds a run; this run writes to {folder}")
    return folder


def claim_new(output_dir: Optional[str], model: str) -> RunFolder:
    """A fresh run folder, locked by rank 0 and named to every rank; a folder another new run took a moment
    earlier is skipped. Gives the run its id, the same on every rank (a training state must carry it to
    resume this run)."""
    run_id = du.broadcast_object(uuid.uuid4().hex)
    run = None
    if du.is_main():
        while True:
            run = RunFolder(new_run_path(output_dir, model), run_id)
            make_folder(run.path)
            try:
                run.lock()
                break
            except RunLockedError:
                continue
    path = du.broadcast_object(run.path if run is not None else None)
    return run if run is not None else RunFolder(path, run_id)
