"""What of the worker's environment a runtime may see: everything but the control plane.

A runtime (an agent) must not be able to write its own job state or queue, so it gets no
``SELFHEAL_*`` variable other than the runtime protocol's, no Celery broker/backend variable, and
no variable whose value is (or holds) the broker or store URL, whatever its name (``REDIS_URL``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

#: the runtime protocol (DESIGN section 6), plus the informational marker used to find descendants
PROTOCOL_VARS = frozenset({
    "SELFHEAL_PROMPT_FILE", "SELFHEAL_RETRY_CONTEXT_FILE", "SELFHEAL_JOB_ID", "SELFHEAL_STEP_ID",
    "SELFHEAL_STEP_INDEX", "SELFHEAL_ATTEMPT", "SELFHEAL_ATTEMPT_MARKER",
})
#: Celery's own env names for its broker and result backend
CELERY_CONTROL_VARS = frozenset({
    "CELERY_BROKER_URL", "CELERY_BROKER_READ_URL", "CELERY_BROKER_WRITE_URL", "CELERY_RESULT_BACKEND",
    "BROKER_URL",
})


def without_control_plane(env: Mapping[str, str], urls: Iterable[str]) -> dict[str, str]:
    """``env`` minus non-protocol ``SELFHEAL_*`` names, Celery's broker/backend names and any
    variable whose value equals or contains one of ``urls`` (the broker and store URLs)."""
    # a bare scheme (``filesystem://``, the embedded broker) names no server and no secret
    secrets = [u for u in urls if u and u.partition("://")[2].strip("/")]
    out: dict[str, str] = {}
    for name, value in env.items():
        if name.startswith("SELFHEAL_") and name not in PROTOCOL_VARS:
            continue
        if name in CELERY_CONTROL_VARS or any(url in value for url in secrets):
            continue
        out[name] = value
    return out
