"""The entry scripts' error wrapper; imports no torch. The parser and the wrapper are defined in the
stand-alone predict_onnx.py (which uses them without this repository); this adds the one line of an
error raised in a DataLoader worker."""
from __future__ import annotations

from typing import Callable, Union

from predict_onnx import ScriptParser  # noqa: F401  (entry scripts import it from here)
from predict_onnx import run_main as _run_main


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
    _run_main(main, interrupted_hint, error_line=_worker_message)
