"""The one exception type the CLI turns into a one-line message and exit status 1."""


class Gpt2SqlError(Exception):
    """A problem the user can fix; str(e) is the whole message, one line."""
