"""The one exception type for bad user input (works on both toolbox backends)."""


class UserError(Exception):
    """Bad input from the user: a one-line message naming the file/key, what is wrong and how to fix it.

    ``train.py`` and the tools print ``ERROR: <message>`` and exit with status 2 (no traceback).
    """
