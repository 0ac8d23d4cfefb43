"""The one exception type for bad user input (works on both toolbox backends) and its one-line report."""
import sys


class UserError(Exception):
    """Bad input from the user: a one-line message naming the file/key, what is wrong and how to fix it.

    ``train.py`` and the tools print ``ERROR: <message>`` and exit with status 2 (no traceback).
    """


def report_error(exc, stream=None):
    """Write ``ERROR: <message>`` (the one line every command prints for a ``UserError``) to ``stream``
    (default stderr) and return the exit status for bad input, 2."""
    (stream or sys.stderr).write("ERROR: {}\n".format(exc))
    return 2
