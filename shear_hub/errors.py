"""One error type for everything a user can fix; the CLI prints its message on one line."""


class ShearHubError(Exception):
    """An error caused by input or environment, with the fix in its message ("what; how to fix")."""
