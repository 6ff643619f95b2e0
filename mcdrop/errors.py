"""Exceptions that carry a message meant for a person: the CLI prints them as one line and exits non-zero."""


class McdropError(Exception):
    """A problem the user can fix; ``str(error)`` says what is wrong and how to fix it."""


class CheckpointError(McdropError):
    """A checkpoint directory is missing, incomplete or corrupt; the message names the file."""


class DatasetError(McdropError):
    """A dataset is missing or malformed; the message names the file or column."""


class ConfigError(McdropError):
    """An invalid setting or hyper-parameter; the message names it and its allowed range."""
