"""Errors a user can cause. The CLI prints their message without a traceback and exits 2."""


class ConfigError(ValueError):
    """A setting was out of range or of the wrong kind; the message names it and what is allowed."""


class UnknownLayerError(KeyError):
    """A layer name that is not registered; the message lists the registered names."""

    def __str__(self) -> str:
        # KeyError's own __str__ would print the message quoted, as if it were a key.
        return str(self.args[0])


class DiskFullError(Exception):
    """A results folder's disk (or quota) is full: the CLI prints the one line naming the folder and the space
    left, and exits 1 (the finished cells are kept; nothing the user wrote was wrong)."""
