"""The one exception type for bad user input, so the CLI can print it as a one-line error."""


class InputError(ValueError):
    """A config value that cannot work; the message names the value and what would be valid."""
