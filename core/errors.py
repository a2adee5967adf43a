"""The one base class for failures the user can fix: their message is complete (one line naming the file, field
or endpoint, and the fix), so the CLI prints it as it is and exits 2 instead of showing a traceback."""

from __future__ import annotations


class UserError(Exception):
    """An expected failure caused by input (files, recipes, endpoints, devices); see the module docstring."""
