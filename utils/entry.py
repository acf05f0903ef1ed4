"""The entry scripts' error wrapper; imports no torch (the ONNX predictor uses it)."""
from __future__ import annotations

import sys
from typing import Callable

from pipeline.errors import CSRAError


def _worker_message(e: BaseException) -> str:
    """The one line of an error re-raised from a DataLoader worker (its message holds the worker's traceback)."""
    text = str(e)
    if "Original Traceback" not in text:
        return text
    last = [ln for ln in text.strip().splitlines() if ln.strip()][-1]
    return last.split(": ", 1)[1] if ": " in last else last


def run_main(main: Callable[[], object], interrupted_hint: str = "") -> None:
    """Run an entry script's main: every CSRAError (also from a DataLoader worker) becomes
    'error: <one line>' and exit 1; Ctrl-C becomes 'interrupted' and exit 130."""
    try:
        main()
    except CSRAError as e:
        sys.exit(f"error: {_worker_message(e)}")
    except KeyboardInterrupt:
        print("interrupted" + (f"; {interrupted_hint}" if interrupted_hint else ""), file=sys.stderr)
        sys.exit(130)
