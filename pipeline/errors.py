"""The one family of user-facing errors.

Library code raises a subclass of ``CSRAError`` with a one-line message that names the file,
record or flag at fault; only an entry script's ``main`` turns it into ``error: <message>`` and
a non-zero exit (see ``utils.cli.run_main``).
"""


class CSRAError(Exception):
    """Base of every error a user should see as one line."""


class ConfigError(CSRAError, ValueError):
    """An option or combination of options that cannot work."""


class DataError(CSRAError):
    """Bad dataset input: JSON, records, images."""


class CheckpointError(CSRAError):
    """A checkpoint that cannot be read, or does not fit the model."""


class PretrainedWeightsError(CheckpointError):
    """ImageNet or CutMix starting weights could not be obtained."""
