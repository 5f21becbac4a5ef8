"""User-facing errors: the CLI prints their message alone (no traceback) and exits non-zero."""


class RestError(Exception):
    """An error caused by the user's input or environment, with a message that says what to do."""
