"""The one error type of export: a problem with the user's input, reported in one line per problem."""


class ExportError(Exception):
    """A run folder, checkpoint, package or output path that cannot be used; the message names it."""
