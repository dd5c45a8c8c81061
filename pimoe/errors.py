"""The one exception type users see.

Everything that is the user's input being wrong (a file, a tensor, a prompt, a kernel) raises
PimoeError with a message that says what was wrong and where; the CLI prints it without a traceback.
Bugs inside pimoe stay ordinary exceptions so they are never mistaken for bad input.
"""


class PimoeError(Exception):
    """Bad input or an unsupported request, with a message meant for the user."""


def printable(text: object) -> str:
    """`text` with control and other non-printable characters escaped (\\n, \\x1b, \\u200b ...), so a name
    taken from a file (a GGUF key, a tensor name) cannot break a one-line message or the terminal."""
    s = str(text)
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in s)
