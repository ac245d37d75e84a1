"""The refusals of the control plane (projects, keys, tables, users): one line each.

They live apart from the operations so that every caller can catch them without
importing the operations: the CLI prints them and exits 2, the admin API answers 400,
404 or 409, and the auth and quota commands raise them too.
"""

from __future__ import annotations


class ProvisioningError(ValueError):
    """Input we refuse; the message is one line for the person at the terminal.

    ``field`` names the input at fault when there is one (the admin API returns it);
    the two subclasses let the API answer 404 and 409 where the CLI just prints.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NotFoundError(ProvisioningError):
    """The project, key or table named doesn't exist."""


class ConflictError(ProvisioningError):
    """The name is taken, or the thing is in a state that refuses the change."""
