"""Errors of the pipeline. The CLI prints a UserInputError or a TrainingStopped as one message (no traceback)
and exits with status 2 or 3."""


class UserInputError(Exception):
    """Input the pipeline cannot use at all: the message names the path and says what to fix."""


class BadSample(Exception):
    """One input file that cannot be used; it is skipped and listed in index.json `skipped` with this reason."""


class TrainingStopped(Exception):
    """A guard stopped training (NaN/Inf loss, representation collapse); the last good checkpoint is kept. Exit 3."""
