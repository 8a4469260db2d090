"""Imports every strategy module so that each registers itself by name."""

from . import simple  # noqa: F401
