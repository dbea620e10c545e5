"""celery-selfheal: self-healing multi-step Celery jobs.

The public API::

    from celery_selfheal import SelfHeal, submit, recover, job_status, follow_events

`SelfHeal(app)` installs the step task, signals and control commands into a Celery app; `submit`
stores and enqueues a job file; `recover` asks for an operator action (REQ-09); `job_status` is the
``status --json`` document; `follow_events` yields a job's events as they are persisted. Errors are
`SelfHealError` subclasses: `InputError` (bad input, exit 2 in the CLI), `ConfigError`,
`ControlError` (a rejected operator action), `WorkspaceError` and `ReplayError`.

Names are imported on first use, so importing a submodule (the pure core, the supervisor) does not
import Celery.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> module that defines it
_EXPORTS = {
    "SelfHeal": "celery_selfheal.wiring.install",
    "submit": "celery_selfheal.api",
    "recover": "celery_selfheal.api",
    "job_status": "celery_selfheal.api",
    "follow_events": "celery_selfheal.api",
    "list_artifacts": "celery_selfheal.api",
    "export_artifacts": "celery_selfheal.api",
    "SelfHealError": "celery_selfheal.errors",
    "InputError": "celery_selfheal.errors",
    "ConfigError": "celery_selfheal.errors",
    "ControlError": "celery_selfheal.errors",
    "WorkspaceError": "celery_selfheal.errors",
    "ReplayError": "celery_selfheal.errors",
}
__all__ = [
    "ConfigError",
    "ControlError",
    "InputError",
    "ReplayError",
    "SelfHeal",
    "SelfHealError",
    "WorkspaceError",
    "export_artifacts",
    "follow_events",
    "job_status",
    "list_artifacts",
    "recover",
    "submit",
]

if TYPE_CHECKING:
    from celery_selfheal.api import export_artifacts, follow_events, job_status, list_artifacts, recover, submit
    from celery_selfheal.errors import (
        ConfigError,
        ControlError,
        InputError,
        ReplayError,
        SelfHealError,
        WorkspaceError,
    )
    from celery_selfheal.wiring.install import SelfHeal


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'celery_selfheal' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
