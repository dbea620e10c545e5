"""The per-process bundle of collaborators: settings, store, redactor, event bus.

`SelfHeal` builds one lazily per process (after a fork the store reopens its own connection), so
importing the package or the Celery app has no side effects.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from celery_selfheal.artifacts import JobArtifacts, check_safe_id
from celery_selfheal.core.classify import Classifier
from celery_selfheal.core.redact import RedactionConfig, Redactor
from celery_selfheal.core.redact_catalog import CatalogError, make_config_rule
from celery_selfheal.errors import ConfigError
from celery_selfheal.events.bus import EventBus
from celery_selfheal.events.sink import EventSink
from celery_selfheal.settings import Settings
from celery_selfheal.store.base import StateStore, open_store


@dataclass
class Context:
    """Everything the engine needs, built from one `Settings`."""

    settings: Settings
    store: StateStore
    redactor: Redactor
    bus: EventBus
    classifiers: Sequence[Classifier] = field(default_factory=tuple)
    _artifacts: dict[str, JobArtifacts] = field(default_factory=dict, repr=False, compare=False)

    def artifacts(self, job_id: str) -> JobArtifacts:
        """The artifact paths of one job. The same instance for the same job (a few are kept): a step
        asks for them several times, and each new one resolved the job's folder again; every path
        it hands out is still resolved in full when asked for (`JobArtifacts`)."""
        found = self._artifacts.get(job_id)
        if found is None:
            found = JobArtifacts(self.settings.artifact_root, job_id)
            if len(self._artifacts) >= 64:
                self._artifacts.clear()
            self._artifacts[job_id] = found
        return found

    def workspace_path(self, job_id: str) -> Path:
        """Where this host keeps the job's workspace."""
        return self.settings.workspace_root / check_safe_id(job_id, what="job id")


def redaction_config(settings: Settings) -> RedactionConfig:
    """`RedactionConfig` from the ``[redaction]`` table of config.toml (typed by `core.config_schema`,
    whose ``[redaction]`` keys are the fields of `RedactionConfig`); each extra rule gets the same
    checks as the built-in rule file's."""
    table = settings.redaction
    where = f"{settings.config_path or 'config.toml'}: [redaction] rules"
    rules = table.get("rules", ())
    if not isinstance(rules, (list, tuple)) or not all(isinstance(r, dict) for r in rules):
        raise ConfigError("must be an array of tables ([[redaction.rules]])", where=where)
    for i, rule in enumerate(rules):
        try:
            make_config_rule(dict(rule), f"entry {i}")
        except CatalogError as exc:
            raise ConfigError(str(exc), where=where) from None
    return RedactionConfig(**{key: tuple(value) for key, value in table.items()})


def default_sinks(settings: Settings) -> list[EventSink]:
    """Sinks configured by env/config: StatsD when ``STATSD_HOST`` or ``[statsd] enabled``."""
    sinks: list[EventSink] = []
    table = settings.statsd
    if os.environ.get("STATSD_HOST") or table.get("enabled") or table.get("host"):
        from celery_selfheal.events.statsd import StatsdSink

        overrides = {k: table[k] for k in ("host", "port", "prefix", "tag_style") if k in table}
        sinks.append(StatsdSink.from_env(os.environ, **overrides))
    return sinks


def build_context(settings: Settings, *, sinks: Sequence[EventSink] | None = None) -> Context:
    """A new context for ``settings`` (store opened lazily by the backend)."""
    store = open_store(settings.store_url)
    redactor = Redactor(os.environ, redaction_config(settings))
    bus = EventBus(store, redactor, default_sinks(settings) if sinks is None else sinks)
    return Context(settings=settings, store=store, redactor=redactor, bus=bus)
