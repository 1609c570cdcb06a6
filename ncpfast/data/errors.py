"""The one exception of the data package."""


class DataError(RuntimeError):
    """A data set is missing, unreadable, corrupt or not the one asked for. Its
    message is one line naming the file (or LMDB key) and what was expected; the
    command-line programs print it as `error: ...` and exit with status 2."""
