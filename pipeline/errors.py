"""The one family of user-facing errors.

Library code raises a subclass of ``CSRAError`` with a one-line message that names the file,
record or flag at fault; only an entry script's ``main`` turns it into ``error: <message>`` and
a non-zero exit (see ``utils.configuration.entry.run_main``). The root of the family and the errors the torch-free
predictor raises are defined in ``predict_onnx.py`` (that file runs alone, so it cannot import them
from here); the rest are here.
"""
from predict_onnx import ConfigError, CSRAError, DataError  # noqa: F401  (the family's root and its common members)


class CheckpointError(CSRAError):
    """A checkpoint that cannot be read, or does not fit the model."""


class PretrainedWeightsError(CheckpointError):
    """ImageNet or CutMix starting weights could not be obtained."""
