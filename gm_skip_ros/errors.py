"""User-facing errors.

A :class:`GmSkipError` is a problem the user can fix (bad path, mismatched plan, empty
data set...). Its message is one line that says what is wrong and what to do next. The
CLI prints it without a traceback and exits with code 2; the ROS node refuses to start
with it. Anything else is a bug and keeps its traceback.
"""


class GmSkipError(Exception):
    """A configuration or input error with a one-line, actionable message."""

    exit_code = 2
