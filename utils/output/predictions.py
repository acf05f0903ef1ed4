"""Predictions on a folder of images, shared by demo.py and the torch-free predict_onnx.py: finding the
images, per-class thresholds, one record per image, and the JSON/CSV output. Defined in predict_onnx.py,
which must run alone beside its .onnx; demo.py takes them from here, so both write the same files."""
from predict_onnx import (find_images, finish, label_record, prediction_line, probabilities,  # noqa: F401
                          read_class_thresholds, thresholds_line)
