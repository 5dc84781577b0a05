"""Errors a user can act on. The CLI prints them as one message (no traceback) and exits with status 2."""


class UserInputError(Exception):
    """Input the pipeline cannot use at all: the message names the path and says what to fix."""


class BadSample(Exception):
    """One input file that cannot be used; it is skipped and listed in index.json `skipped` with this reason."""
