"""The entry scripts' error wrapper; imports no torch (the ONNX predictor uses it)."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Union

from pipeline.errors import CSRAError


def _worker_message(e: BaseException) -> str:
    """The one line of an error re-raised from a DataLoader worker (its message holds the worker's traceback)."""
    text = str(e)
    if "Original Traceback" not in text:
        return text
    last = [ln for ln in text.strip().splitlines() if ln.strip()][-1]
    return last.split(": ", 1)[1] if ": " in last else last


def run_main(main: Callable[[], object], interrupted_hint: Union[str, Callable[[], str]] = "") -> None:
    """Run an entry script's main: every CSRAError (also from a DataLoader worker) becomes
    'error: <one line>' and exit 1; Ctrl-C becomes 'interrupted; <hint>' and exit 130 (the hint may be
    a function, asked at that moment: main.py names the command that resumes the run). A closed output
    pipe (``| head``) ends quietly."""
    try:
        main()
        sys.stdout.flush()  # here, not at exit: a closed pipe is then caught below
    except CSRAError as e:
        sys.exit(f"error: {_worker_message(e)}")
    except KeyboardInterrupt:
        hint = interrupted_hint() if callable(interrupted_hint) else interrupted_hint
        print("interrupted" + (f"; {hint}" if hint else ""), file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # the output went to a reader that stopped (`... | head`): not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # (so Python's own flush at exit does not fail again)
        sys.exit(0)


class ScriptParser(argparse.ArgumentParser):
    """Every entry script's parser: flags are never abbreviated (``--total`` is not ``--total_epoch``: a
    resumed run compares the flags typed, and an abbreviation would slip past it), and a bad command
    line is one line, 'error: ...', naming the flag, and exit 2 (``--help`` shows the options)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {os.path.basename(self.prog)} --help)\n")
