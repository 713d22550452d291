"""Errors a user can cause and fix.

The CLI prints these as one line (no traceback): the message must name the file and the fix.
"""


class ClinalignError(Exception):
    """A problem with the user's input, worded for the user."""


class DataError(ClinalignError):
    """An image folder, image file, CSV or label that cannot be used as given."""


class CheckpointError(ClinalignError):
    """A checkpoint that is missing, corrupt or from an incompatible configuration."""


class ConfigError(ClinalignError):
    """Flags that contradict each other or the run they refer to."""
