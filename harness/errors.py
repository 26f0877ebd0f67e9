"""The one exception type for user mistakes: the CLI prints it as a single line and exits 2."""


class BenchError(Exception):
    """A mistake the user can fix. The message names the problem and the fix, in one line."""

    exit_code = 2
