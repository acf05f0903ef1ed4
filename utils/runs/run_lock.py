"""One process trains in a run folder at a time: the folder's ``.lock`` file.

The lock is created atomically (O_EXCL) and holds the holder's host, PID, process start time and
start date; a background thread refreshes its modification time every ``HEARTBEAT_S`` seconds while
the run lives. A second process stops with one line naming the holder. A lock left by a killed
process is taken over with a note: on this host when its PID is gone (or now names another
process), from another host when its heartbeat is older than ``STALE_AFTER_S``. Under torchrun
only rank 0 takes the lock; the other ranks share it.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from typing import Optional

from pipeline.errors import CSRAError
from utils.output.fileio import OutputError, describe_os_error

LOCK_FILE = ".lock"
HEARTBEAT_S = 60.0
STALE_AFTER_S = 15 * 60.0  # a lock from another host whose heartbeat stopped this long ago is stale


class RunLockedError(CSRAError):
    """Another live process trains in this run folder."""


def _start_time(pid: int) -> Optional[str]:
    """The process's start time in clock ticks since boot (Linux), to tell a reused PID apart."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: Optional[str]) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    now = _start_time(pid)
    return start is None or now is None or now == start


class RunLock:
    def __init__(self, folder: str):
        self.path = os.path.join(folder, LOCK_FILE)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _describe(self, holder: dict) -> str:
        since = time.strftime("%Y-%m-%d %H:%M", time.localtime(holder.get("started", 0)))
        return f"process {holder.get('pid')} on {holder.get('host')} (since {since})"

    def _stale_reason(self, holder: dict) -> Optional[str]:
        """Why the lock's holder is gone, or None when it may still be training."""
        if holder.get("host") == socket.gethostname():
            pid = holder.get("pid")
            if not isinstance(pid, int) or not _alive(pid, holder.get("start_time")):
                return f"left by {self._describe(holder)}, which is no longer running"
            return None
        try:
            age = time.time() - os.path.getmtime(self.path)
        except OSError:
            return "gone"
        if age > STALE_AFTER_S:
            return f"left by {self._describe(holder)}, silent for {age / 60:.0f} minutes"
        return None

    def _holder(self) -> dict:
        try:
            with open(self.path) as f:
                holder = json.load(f)
        except (OSError, ValueError):
            return {}
        return holder if isinstance(holder, dict) else {}

    def _create(self, me: dict) -> bool:
        """Create the lock file holding ``me``; False when one exists already."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as e:
            raise OutputError(f"{self.path}: cannot write the run lock: {describe_os_error(e)}") from None
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
        except OSError as e:  # a full disk: no half-written lock stays behind
            with contextlib.suppress(OSError):
                os.remove(self.path)
            raise OutputError(f"{self.path}: cannot write the run lock: {describe_os_error(e)}") from None
        return True

    def acquire(self) -> Optional[str]:
        """Take the lock; returns a note when a stale lock was taken over. RunLockedError when held."""
        me = {"host": socket.gethostname(), "pid": os.getpid(), "start_time": _start_time(os.getpid()),
              "started": time.time()}
        note = None
        for _ in range(3):
            if self._create(me):
                self._thread = threading.Thread(target=self._beat, daemon=True)
                self._thread.start()
                return note
            holder = self._holder()
            reason = self._stale_reason(holder) if holder else "unreadable"
            if reason is None:
                raise RunLockedError(
                    f"{os.path.dirname(self.path)}: a run is in progress there ({self._describe(holder)}); wait "
                    "for it to end or stop it (a lock left by a killed process is taken over automatically)")
            note = f"note: took over the lock of {os.path.dirname(self.path)} ({reason})"
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)
        raise RunLockedError(f"{self.path}: could not take the run lock (another process keeps taking it)")

    def live_holder(self) -> Optional[str]:
        """Who holds the lock while it is held by a live process (None: no lock, or a stale one)."""
        if not os.path.isfile(self.path):
            return None
        holder = self._holder()
        return self._describe(holder) if holder and self._stale_reason(holder) is None else None

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        self._stop.set()
        try:
            with open(self.path) as f:
                mine = json.load(f).get("pid") == os.getpid()
        except (OSError, ValueError, AttributeError):
            mine = False
        if mine:
            try:
                os.remove(self.path)
            except OSError:
                pass
