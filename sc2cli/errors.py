"""Errors sc2 raises on purpose; the CLI turns each into one line on stderr and an exit code."""

from __future__ import annotations


class Sc2Error(Exception):
    """A failure with a message fit for the user. `exit_code` 2 means bad usage or input, 1 anything else."""

    exit_code = 1


class UsageError(Sc2Error):
    exit_code = 2


class CheckpointError(Sc2Error):
    """A checkpoint that is missing, incomplete, corrupt or not StarCoder2."""

    exit_code = 1
