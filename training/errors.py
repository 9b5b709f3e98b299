"""The one exception type for problems a user can fix: bad files, bad options, bad run folders."""


class UserInputError(Exception):
    """A problem with the user's input. The message is one line per problem, naming the file.

    Entry points print it without a traceback and exit with status 2.
    """
