"""Errors sc2 raises on purpose. The core describes the problem; the edge words it (the CLI as a flag and an exit
code, a server as an HTTP status in its protocol's error shape)."""

from __future__ import annotations


class Sc2Error(Exception):
    """A failure with a message fit for the user. `exit_code` 2 means bad usage or input, 1 anything else."""

    exit_code = 1


class InputError(Sc2Error):
    """Bad input to a core call. `field` names the request field at fault ("line", "device", "max_new_tokens"):
    the CLI names its flag, a server the JSON field."""

    exit_code = 2

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class UsageError(InputError):
    """A command line that cannot run as given (options that do not go together, a missing argument)."""


class CheckpointError(Sc2Error):
    """A checkpoint that is missing, incomplete, corrupt or not StarCoder2."""

    exit_code = 1
