"""mcdrop's domain errors: every problem a person can act on, each with a message meant for that person.

One taxonomy for the library, the CLI and the service. The CLI prints any :class:`McdropError` as one line and
exits 2; the HTTP service maps each class to its status in one place (``mcdrop.serving.errors``):

==========================  =================================================  ======
error                       meaning                                            HTTP
==========================  =================================================  ======
:class:`ConfigError`        an invalid setting or hyper-parameter              (start-up)
:class:`CheckpointError`    a checkpoint that is missing, incomplete, corrupt   (start-up)
:class:`DatasetError`       a data file that is missing or malformed            (CLI)
:class:`InputError`         a request's input breaks a rule or a limit          422
:class:`ModelNotFound`      a request names a model that is not served          404
:class:`Overloaded`         the queue is full; nothing was started              503
:class:`ShuttingDown`       the service is stopping and takes no new work       503
:class:`OutOfMemory`        the device ran out of memory for a batch            503
:class:`ModelUnavailable`   the named model's checkpoint failed to load         503
:class:`DeadlineExceeded`   the engine stopped a batch at its deadline          504
==========================  =================================================  ======
"""

from __future__ import annotations


class McdropError(Exception):
    """A problem the user can fix; ``str(error)`` says what is wrong and how to fix it."""


class ConfigError(McdropError):
    """An invalid setting or hyper-parameter; the message names it and its allowed range."""


class CheckpointError(McdropError):
    """A checkpoint directory is missing, incomplete or corrupt; the message names the file."""


class DatasetError(McdropError):
    """A dataset is missing or malformed; the message names the file or column."""


class InputError(McdropError, ValueError):
    """Invalid input to a prediction; the message names the field and the rule or limit it breaks."""


class ModelNotFound(McdropError, LookupError):
    """A request names a model that is not served; the message lists the served ones."""


class Overloaded(McdropError):
    """A model's queue is full; nothing was started. Retry later."""


class ShuttingDown(McdropError):
    """The service is stopping and takes no new work."""


class OutOfMemory(McdropError):
    """The inference device ran out of memory for a batch; retry later or with a smaller request."""


class ModelUnavailable(McdropError, LookupError):
    """A request names a model whose checkpoint failed to load; the message says where the reason is."""


class DeadlineExceeded(McdropError, TimeoutError):
    """The engine stopped work at its deadline: nobody waits for the rest. Retry with a smaller request."""
