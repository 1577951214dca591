"""The one exception type for user errors: the CLI prints its message on one line and exits 1."""


class CamdeployError(Exception):
    """Bad input or an unmet requirement, described so that the user can fix it.

    Messages name the argument, the value received, what was expected, and how to fix it.
    """
