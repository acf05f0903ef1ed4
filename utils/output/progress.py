"""Progress a person can read: tqdm bars on a terminal; in a log file (output redirected) no bars, one
plain line every ``print_freq`` iterations instead; durations as H:MM:SS. Imports no torch (the
preparation scripts use it)."""
from __future__ import annotations

import os
import sys
import time
from typing import Callable, Optional

from tqdm import tqdm

from utils.output.fileio import atomic_write


def is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"  # torchrun sets RANK; a plain run is rank 0


# The size a bar needs; a terminal that reports less gets plain lines, as a log file does. Some report
# 0 x 0, some 120 columns and 0 rows: tqdm keeps the last row free and draws nothing at all when no row is
# left above it (0 rows), or '... (more hidden) ...' instead of the bar (2 rows).
MIN_BAR_WIDTH, MIN_BAR_ROWS = 40, 3


def terminal_size() -> os.terminal_size:
    """stderr's terminal size; 0 x 0 when it has none."""
    try:
        return os.get_terminal_size(sys.stderr.fileno())
    except (OSError, AttributeError, ValueError):
        return os.terminal_size((0, 0))


def on_terminal() -> bool:
    """Whether progress bars belong on stderr: the main process, writing to a terminal large enough for one."""
    if not (is_main_process() and sys.stderr.isatty()):
        return False
    size = terminal_size()
    return size.columns >= MIN_BAR_WIDTH and size.lines >= MIN_BAR_ROWS


def say(text: str) -> None:
    """A line on stdout that never lands on the end of a progress bar (tqdm clears and redraws it)."""
    if on_terminal():
        tqdm.write(text, file=sys.stdout)
        sys.stdout.flush()
    else:
        print(text, flush=True)


class RankZero:
    """The one switch for what a run prints and writes under torchrun: rank 0 does it; every other rank makes
    the same calls and nothing happens (a single process is rank 0)."""

    def __init__(self, on: bool):
        self.on = on

    def say(self, *lines: Optional[str]) -> None:
        """Each line that is not empty or None, as ``say`` prints it."""
        for line in lines:
            if self.on and line:
                say(line)

    def do(self, fn: Callable[..., object], *args, **kwargs) -> None:
        """``fn(*args, **kwargs)`` on rank 0 only: a file written, a page drawn."""
        if self.on:
            fn(*args, **kwargs)


def bar(iterable=None, **kwargs):
    """tqdm, shown only on a terminal (a redirected log would fill with carriage-return frames)."""
    return tqdm(iterable, disable=not on_terminal(), dynamic_ncols=True, mininterval=1.0, **kwargs)


def duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


PRINTS_PER_EPOCH = 4  # at least: an epoch shorter than --print_freq still shows its loss and speed


class EpochProgress:
    """One training epoch's progress: a bar on a terminal, else a line like
    ``epoch 2/30 step 100/625 loss 0.1234 lr 1.00e-02 312.5 img/s epoch ETA 0:01:40`` every
    ``print_freq`` iterations, at least PRINTS_PER_EPOCH times an epoch (and at the epoch's last)."""

    def __init__(self, epoch: int, total_epochs: int, iters: int, start: int, print_freq: int):
        self.epoch, self.total_epochs, self.iters, self.start = epoch, total_epochs, iters, start
        self.print_freq = max(1, min(print_freq, iters // PRINTS_PER_EPOCH))
        self.t0 = time.time()
        self.main = is_main_process()
        self.bar = tqdm(total=iters, initial=start, desc=f"epoch {epoch + 1}/{total_epochs}",
                        disable=not on_terminal(), dynamic_ncols=True, mininterval=1.0)

    def update(self, it: int, mean_loss: float, lr: float, img_s: float) -> None:
        if not self.main:
            return
        self.bar.update(1)
        if it % self.print_freq and it != self.iters:
            return
        if not self.bar.disable:
            self.bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", img_s=f"{img_s:.1f}")
            return
        done = it - self.start
        left = (time.time() - self.t0) / max(done, 1) * (self.iters - it)
        print(f"epoch {self.epoch + 1}/{self.total_epochs} step {it}/{self.iters} loss {mean_loss:.4f} "
              f"lr {lr:.2e} {img_s:.1f} img/s epoch ETA {duration(left)}", flush=True)

    def close(self) -> None:
        self.bar.close()


LONG_RUN_HOURS = 3  # a start-up ETA above this gets a second line saying what makes a run shorter


def long_run_advice(device: Optional[str]) -> str:
    """What shortens a run, for a start-up ETA above LONG_RUN_HOURS; ``device``: torch's device type, if known."""
    where = "more GPUs (torchrun)" if device == "cuda" else "a GPU"
    return (f"warning: over {LONG_RUN_HOURS} hours; to go faster: a smaller --img_size or --model, fewer "
            f"--total_epoch, or {where}")


class RunClock:
    """The whole run's ETA: from the first steps' speed at the start (with advice when it is over
    LONG_RUN_HOURS), then from the epochs' wall time. ``device``: where it trains (torch's device type);
    ``now``: the clock (a test's fake one)."""

    def __init__(self, first_epoch: int, total_epochs: int, iters_per_epoch: int, start_iter: int,
                 device: Optional[str] = None, now: Callable[[], float] = time.time):
        self.total, self.ipe = total_epochs, iters_per_epoch
        self.first_epoch, self.start_iter = first_epoch, start_iter
        self.device, self.now = device, now
        self.t0 = now()
        self.epochs_done = 0
        self.first_steps: Optional[float] = None

    def after_step(self, steps_done: int, probe: int = 10) -> Optional[str]:
        """After ``probe`` steps of this process, the estimate for the whole run (training only); a second
        line when it is over LONG_RUN_HOURS."""
        if self.first_steps is not None or steps_done < probe:
            return None
        self.first_steps = self.now() - self.t0
        remaining = (self.total - self.first_epoch) * self.ipe - self.start_iter - steps_done
        eta = self.first_steps / steps_done * remaining
        text = (f"ETA for the whole run: about {duration(eta)} of training (measured on the first {steps_done} "
                "steps; evaluation comes on top)")
        return text + "\n" + long_run_advice(self.device) if eta > LONG_RUN_HOURS * 3600 else text

    def after_epoch(self, epoch_done: int) -> str:
        self.epochs_done += 1
        per_epoch = (self.now() - self.t0) / self.epochs_done
        left = self.total - epoch_done
        return (f"epoch {epoch_done}/{self.total} done; {duration(per_epoch)} per epoch with evaluation, ETA "
                f"{duration(per_epoch * left)} for the remaining {left}" if left else
                f"epoch {epoch_done}/{self.total} done; the run took {duration(self.now() - self.t0)}")


class StepLog:
    """Every iteration's loss and learning rates, one CSV line each, in the run folder (``steps.csv``).
    Buffered; ``flush`` runs before each training-state save, so a resumed run finds every step up to
    its state on disk and drops the lines after it (``truncate``)."""

    HEADER = "global_step,epoch,iteration,loss,lr_backbone,lr_head\n"

    def __init__(self, path: str):
        new = not os.path.isfile(path)
        self.f = open(path, "a", encoding="utf-8")
        if new:
            self.f.write(self.HEADER)

    def write(self, global_step: int, epoch: int, iteration: int, loss: Optional[float], lrs) -> None:
        loss_text = "" if loss is None else f"{loss:.6g}"
        self.f.write(f"{global_step},{epoch},{iteration},{loss_text}," + ",".join(f"{lr:.6g}" for lr in lrs) + "\n")

    def flush(self) -> None:
        self.f.flush()

    def close(self) -> None:
        self.f.close()

    @staticmethod
    def truncate(path: str, last_step: int) -> None:
        """Keep the header and the complete lines of global steps up to ``last_step`` (a resumed run's
        state); a line cut short by a kill is dropped."""
        if not os.path.isfile(path):
            return
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
        complete = [ln for ln in lines[1:] if ln.endswith("\n") and ln.count(",") == StepLog.HEADER.count(",")]
        kept = [ln for ln in complete if ln.split(",", 1)[0].isdigit() and int(ln.split(",", 1)[0]) <= last_step]
        with atomic_write(path) as f:
            f.writelines([StepLog.HEADER] + kept)
