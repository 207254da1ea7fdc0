"""Exceptions the CLI reports as usage errors (exit status 2) rather than runtime failures (exit status 1).

Both subclass the built-in type a Python caller expects (`ValueError` for a bad value or combination of options,
`TypeError` for an argument a constructor does not take), so library code and tests catch them as usual.
This module imports nothing, so that `fgvc_zoo.cli` stays fast.
"""

__all__ = ['UsageError', 'UnknownArgumentError']


class UsageError(ValueError):
    """A flag value or a combination of flags that cannot work: the fix is on the command line."""


class UnknownArgumentError(TypeError):
    """A model argument (e.g. from `--model-args`) that the head's constructor does not take."""
