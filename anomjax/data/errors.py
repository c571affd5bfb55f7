"""The one exception type the data pipeline raises for bad input."""

from __future__ import annotations


class DataError(ValueError):
    """A dataset, image or mask cannot be used; the message names the file and the problem."""
