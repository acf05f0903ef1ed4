"""Helpers shared by the preparation scripts: atomic JSON output, summaries, one-line errors."""
from __future__ import annotations

import json
import os
import sys
from typing import List, Sequence


class PrepareError(Exception):
    """Bad raw dataset input; the message names the file."""


def write_json_atomic(records: object, path: str) -> None:
    """Write to a temporary file in the target folder, then rename: never a half-written JSON."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(records, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def require_dir(path: str) -> str:
    if not os.path.isdir(path):
        raise PrepareError(f"{path}: no such folder")
    return path


def require_file(path: str) -> str:
    if not os.path.isfile(path):
        raise PrepareError(f"{path}: no such file")
    return path


def summarize(path: str, records: List[dict], class_names: Sequence[str]) -> str:
    """'wrote PATH: N records' plus positives per class."""
    lines = [f"wrote {path}: {len(records)} records"]
    if records and "target" in records[0]:
        counts = [sum(1 for r in records if r["target"][c] == 1) for c in range(len(class_names))]
        width = max(len(n) for n in class_names)
        lines.append("  positives per class:")
        for name, n in zip(class_names, counts):
            lines.append(f"    {name:{width}s} {n}")
    return "\n".join(lines)


def run_main(main) -> None:
    """Run a script's main(), turning PrepareError into a one-line message and exit code 1."""
    try:
        main()
    except PrepareError as e:
        sys.exit(f"error: {e}")
