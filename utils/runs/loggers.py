"""Where a training run's progress goes, one class each, behind one fan-out: ``log.jsonl`` (a line per
epoch), ``steps.csv`` (a line per iteration), TensorBoard. A new sink is one class with ``step``,
``epoch``, ``flush`` and ``close``; each clears what a resumed run is about to redo when it opens."""
from __future__ import annotations

import json
import os
from typing import List, Optional, Sequence

from pipeline.errors import ConfigError, DataError
from utils.output.fileio import atomic_write
from utils.output.progress import StepLog

EPOCH_SCALARS = ("train_loss", "images_per_s", "mAP", "CF1", "OF1", "ema_mAP", "val_mAP", "val_CF1", "val_OF1",
                 "ema_val_mAP", "test_mAP")  # what TensorBoard plots per epoch


class Sink:
    def step(self, global_step: int, epoch: int, iteration: int, loss: Optional[float], lrs: Sequence[float]) -> None:
        pass

    def epoch(self, entry: dict) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def read_epoch_log(path: str, skip_bad: bool = False) -> List[dict]:
    """log.jsonl's entries, one JSON object a line (blank lines skipped). A line that is not a JSON object with
    an 'epoch' stops with one line naming it, or with ``skip_bad`` is left out (a line a kill cut short)."""
    entries = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                entry = None
            if isinstance(entry, dict) and "epoch" in entry:
                entries.append(entry)
            elif not skip_bad:
                raise DataError(f"{path}: line {n} is not a JSON object with an 'epoch'")
    return entries


class EpochLog(Sink):
    """log.jsonl: one JSON line per finished epoch (the last one also holds the run's ``final`` result); a
    resumed run first drops the lines of the epochs after its state, which it is about to redo."""

    def __init__(self, path: str, resumed_epoch: Optional[int] = None):
        self.path = path
        if resumed_epoch is not None and os.path.isfile(path):  # (0 too: killed before the first epoch's state)
            kept = [e for e in read_epoch_log(path, skip_bad=True)
                    if isinstance(e["epoch"], int) and e["epoch"] <= resumed_epoch]
            with atomic_write(path) as f:
                f.writelines(json.dumps(e) + "\n" for e in kept)

    def epoch(self, entry: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(entry) + "\n")


class StepsCsv(Sink):
    """steps.csv: every iteration's loss and learning rates (``utils.output.progress.StepLog``)."""

    def __init__(self, path: str, resumed_step: int = 0):
        StepLog.truncate(path, resumed_step)  # steps after the state go
        self.log = StepLog(path)

    def step(self, global_step, epoch, iteration, loss, lrs) -> None:
        self.log.write(global_step, epoch, iteration, loss, list(lrs))

    def flush(self) -> None:
        self.log.flush()

    def close(self) -> None:
        self.log.close()


class TensorBoard(Sink):
    """tensorboard/: the loss and the backbone's LR per step, EPOCH_SCALARS per epoch."""

    def __init__(self, folder: str):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
        self.writer = SummaryWriter(os.path.join(folder, "tensorboard"))

    def step(self, global_step, epoch, iteration, loss, lrs) -> None:
        if loss is not None:
            self.writer.add_scalar("train/loss", loss, global_step)
            self.writer.add_scalar("train/lr_backbone", lrs[0], global_step)

    def epoch(self, entry: dict) -> None:
        for key in EPOCH_SCALARS:
            if entry.get(key) is not None:
                self.writer.add_scalar(f"epoch/{key}", entry[key], entry["epoch"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class Loggers(Sink):
    """Every sink at once (none on the ranks that do not write)."""

    def __init__(self, sinks: List[Sink]):
        self.sinks = sinks

    def step(self, *a) -> None:
        for s in self.sinks:
            s.step(*a)

    def epoch(self, entry: dict) -> None:
        for s in self.sinks:
            s.epoch(entry)

    def flush(self) -> None:
        for s in self.sinks:
            s.flush()

    def close(self) -> None:
        for s in self.sinks:
            s.close()
