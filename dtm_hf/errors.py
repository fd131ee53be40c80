"""The one exception type that the command line turns into a single clear error line."""


class DtmError(Exception):
    """A problem with the user's input or environment; its message says what is wrong and what to do."""


def first_line(err: BaseException) -> str:
    """An exception's first non-empty line, or its type's name when it has no message: for one-line errors."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__
