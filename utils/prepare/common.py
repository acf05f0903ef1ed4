"""Helpers shared by the preparation scripts: atomic JSON output, summaries, one-line errors."""
from __future__ import annotations

import os
from typing import List, Optional, Sequence

from pipeline.errors import CSRAError
from utils.configuration.entry import run_main  # noqa: F401  (the prepare scripts' entry wrapper)
from utils.output.fileio import atomic_write, write_json_atomic


class PrepareError(CSRAError):
    """Bad raw dataset input; the message names the file."""


def require_dir(path: str) -> str:
    if not os.path.isdir(path):
        raise PrepareError(f"{path}: no such folder")
    return path


def require_file(path: str) -> str:
    if not os.path.isfile(path):
        raise PrepareError(f"{path}: no such file")
    return path


def refuse_overwrite(paths, force: bool) -> None:
    """Prepared files are never replaced silently: stop naming the first that exists, unless --force."""
    existing = [p for p in paths if os.path.exists(p)]
    if existing and not force:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise PrepareError(f"{existing[0]}{more}: already prepared; pass --force to overwrite")


def add_force_flag(p) -> None:
    p.add_argument("--force", action="store_true", help="overwrite prepared files that already exist")


def dataset_parser(description: str, data_help: str, out_dir: Optional[str], out_help: Optional[str] = None):
    """The parser of a script that prepares a downloaded dataset: --data_path, --out_dir, --force."""
    from utils.configuration.entry import ScriptParser
    p = ScriptParser(description=description)
    p.add_argument("--data_path", required=True, help=data_help)
    p.add_argument("--out_dir", default=out_dir, help=out_help)
    add_force_flag(p)
    return p


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


CLASS_FILE = "classes.txt"  # beside the JSON files: every entry script finds the names there


def write_class_names(out_dir: str, names: Sequence[str], quiet: bool = False) -> str:
    """classes.txt (one name per line) beside the prepared JSON files, written atomically."""
    path = os.path.join(out_dir, CLASS_FILE)
    with atomic_write(path) as f:
        f.write("\n".join(names) + "\n")
    if not quiet:
        print(f"wrote {path}: {len(names)} classes")
    return path


def write_split(path: str, records: List[dict], class_names: Sequence[str], quiet: bool = False) -> str:
    """Write one prepared split (atomically: never a half-written JSON) and print its summary."""
    write_json_atomic(records, path)
    if not quiet:
        print(summarize(path, records, class_names))
    return path
