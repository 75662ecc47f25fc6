"""The one exception type for bad user input, so the CLI can print it as a one-line error."""


class InputError(ValueError):
    """A config value that cannot work; the message names the value and what would be valid."""


class RunWarning(UserWarning):
    """What a user must know about a run's input or numbers (an overflow, an edit that
    changed nothing): the CLI prints it as one `lit_massive: warning: ...` line, not Python's
    file-and-source-line format, which reads like a traceback."""
