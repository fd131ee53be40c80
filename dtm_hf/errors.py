"""The one exception type that the command line turns into a single clear error line."""


class DtmError(Exception):
    """A problem with the user's input or environment; its message says what is wrong and what to do."""
