"""Exceptions shared across the package.

`InputError` is what every user-facing validation raises: the CLI prints ``str(err)`` as one line
and exits 2.
"""

from __future__ import annotations


class SelfHealError(Exception):
    """Base of all celery-selfheal errors."""


class InputError(SelfHealError):
    """Invalid user input (job file, config, env, CLI argument). One line: where and what."""

    def __init__(self, message: str, *, where: str | None = None) -> None:
        self.where = where
        self.message = message
        super().__init__(f"{where}: {message}" if where else message)


class ConfigError(InputError):
    """Invalid configuration value (config.toml, env var, job or step override)."""


class WorkspaceError(SelfHealError):
    """A git operation on a workspace failed."""


class ReplayError(WorkspaceError):
    """A checkpoint could not be verified or replayed. Names the step and the file."""

    def __init__(self, message: str, *, step_index: int | None = None, path: str | None = None) -> None:
        self.step_index = step_index
        self.path = path
        super().__init__(message)


class ControlError(InputError):
    """An operator action was rejected (unknown job/step, wrong state)."""


class StoreError(SelfHealError):
    """The state store cannot be used (a corrupt or unreadable file, a full disk)."""
