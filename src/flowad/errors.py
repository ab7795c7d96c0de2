"""Errors that flowad raises for bad input; the CLI turns them into exit status 2."""


class FlowadError(Exception):
    """Base class of every error flowad raises on purpose."""


class InputError(FlowadError, ValueError):
    """Bad user input: a file, folder or value that is not what flowad expects.

    The message always names the offending file or value and says what was expected.
    """
