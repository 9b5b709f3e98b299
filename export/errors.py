"""The errors of export: bad input (exit status 2) and a package that failed its checks (exit status 1)."""

from base.errors import UserInputError


class ExportError(UserInputError):
    """A run folder, checkpoint, package or output path that cannot be used; the message names it."""


class FailedChecks(ExportError):
    """A package was built but failed the checks, so it was not written."""

    exit_code = 1
