"""Reading JSON files with one-line errors; imports no torch (the ONNX predictor uses it)."""
from __future__ import annotations

import json

from pipeline.errors import DataError


def read_json(path: str):
    """A JSON file (UTF-8, a byte-order mark accepted) with one-line errors naming it."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
