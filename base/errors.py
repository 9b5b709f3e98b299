"""The one family of errors that a command reports as a message instead of a traceback.

Each class carries the exit status its command ends with (`export.errors.FailedChecks`, a package that
failed its checks, ends with 1), so no caller decides a status by reading a
message's text.
"""


class ZooError(Exception):
    """A problem the user can act on. The message is one line per problem, naming the file or option."""

    exit_code = 2


class UserInputError(ZooError):
    """Bad input: a file, folder, option or run folder that cannot be used (exit status 2)."""
