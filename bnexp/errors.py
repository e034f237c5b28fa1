"""The one error type for user mistakes: the CLI prints it as a short message and exits 2."""


class BnexpError(Exception):
    """A problem the user can fix (bad override, missing data, bad value).

    The message says what was wrong and how to fix it; bugs keep their own exception types so
    that their tracebacks stay visible.
    """
