"""The one exception type users see.

Everything that is the user's input being wrong (a file, a tensor, a prompt, a kernel) raises
PimoeError with a message that says what was wrong and where; the CLI prints it without a traceback.
Bugs inside pimoe stay ordinary exceptions so they are never mistaken for bad input.
"""


class PimoeError(Exception):
    """Bad input or an unsupported request, with a message meant for the user."""
