"""Reading JSON files with one-line errors: ``read_json``, defined in the stand-alone ``predict_onnx.py``
(which reads thresholds files with it) and used from here by the rest of the project."""
from predict_onnx import read_json  # noqa: F401
