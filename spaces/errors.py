"""The one exception of the package."""

from __future__ import annotations


class SpaceError(ValueError):
    """A search space that cannot be built: its message names the space and the problem.

    Raised for unknown parameters or values, bad ranges, bad conditions, malformed
    or missing files and unknown built-in names.
    """
