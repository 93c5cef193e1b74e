"""The command's user-facing error and its optional-dependency check (standard library only)."""

from __future__ import annotations


class CliError(Exception):
    """A user-facing problem: printed as one line, exit code 2."""


def require(module: str):
    """Imports an optional dependency or says which extra to install."""
    try:
        return __import__(module)
    except ImportError:
        raise CliError(f"{module} is required for this command: pip install 'wandering[cli]'") from None
