"""A user's own Celery app: selfheal settings from its ``app.conf``, and the few settings we add.

``SelfHeal(app)`` takes the broker from the app (``broker_url``) and reads ``selfheal_*`` keys from
``app.conf``: ``selfheal_store_url``, ``selfheal_artifact_root``, ``selfheal_workspace_root``,
``selfheal_state_dir``, ``selfheal_config`` and every REQ-02 budget as ``selfheal_<key>``. Order:
defaults < app.conf < config.toml < env < flags (`settings.load_settings` does the upper layers).

Unlike the ready app there is no embedded fallback: the store defaults to the app's Redis when its
broker is Redis, any other broker needs a store URL, and roots not set go under
``$XDG_STATE_HOME/selfheal`` (``~/.local/state/selfheal``), never the current directory.

What we add to the app is only what the user did not set (`app_defaults`); our own tasks and
messages are JSON by themselves (per-task ``serializer="json"``), so the app's serializer stays.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from celery import Celery

from celery_selfheal.core.budgets import BUDGET_KEYS, validate_overrides
from celery_selfheal.errors import ConfigError
from celery_selfheal.settings import Settings, load_settings

#: ``app.conf`` key -> `load_settings` state key
STATE_KEYS = {"selfheal_store_url": "store_url", "selfheal_artifact_root": "artifact_root",
              "selfheal_workspace_root": "workspace_root", "selfheal_state_dir": "state_dir",
              "selfheal_config": "config"}
BUDGET_CONF_KEYS = {f"selfheal_{key}": key for key in BUDGET_KEYS}
#: what Celery connects to when an app names no broker at all
CELERY_DEFAULT_BROKER = "amqp://guest@localhost//"
PICKLE = ("pickle", "application/x-python-serialize")


def xdg_state_root(env: Mapping[str, str]) -> Path:
    """``$XDG_STATE_HOME/selfheal``, else ``~/.local/state/selfheal``."""
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "selfheal"


def user_set(conf: Any, key: str) -> bool:
    """True if the app's configuration (``Celery(...)`` arguments, ``conf.update``, a config source)
    sets ``key``; Celery's own defaults (the last map) do not count."""
    maps = getattr(conf, "maps", None)
    if not maps:
        return key in conf
    return any(key in m for m in maps[:-1])


def app_layer(conf: Any) -> tuple[dict[str, str], dict[str, Any]]:
    """The app's part of the settings: (state keys incl. ``broker_url``, budget overrides)."""
    state: dict[str, str] = {}
    for conf_key in [k for k in conf if str(k).lower().startswith("selfheal_")]:
        if conf_key not in STATE_KEYS and conf_key not in BUDGET_CONF_KEYS:
            known = ", ".join(sorted([*STATE_KEYS, "selfheal_<budget key>"]))
            raise ConfigError(f"unknown key (known: {known})", where=f"app.conf: {conf_key}")
    for conf_key, key in STATE_KEYS.items():
        value = conf.get(conf_key)
        if value is None:
            continue
        if not isinstance(value, (str, os.PathLike)):
            raise ConfigError(f"must be a string, got {type(value).__name__}", where=f"app.conf: {conf_key}")
        state[key] = str(value)
    state["broker_url"] = str(conf.broker_url or CELERY_DEFAULT_BROKER)
    raw = {key: conf[conf_key] for conf_key, key in BUDGET_CONF_KEYS.items() if conf.get(conf_key) is not None}
    budgets = validate_overrides(raw, where="app.conf", sep=": selfheal_") if raw else {}
    return state, budgets


def settings_for_app(app: Celery, *, state_dir: str | None = None, broker_url: str | None = None,
                     store_url: str | None = None, config_path: str | None = None,
                     env: Mapping[str, str] | None = None) -> Settings:
    """The settings of a user's own app: its ``app.conf`` under config.toml, env and flags."""
    env = os.environ if env is None else env
    state, budgets = app_layer(app.conf)
    settings = load_settings(state_dir=state_dir, broker_url=broker_url, store_url=store_url,
                             config_path=config_path, env=env, app_layer=state,
                             default_state_dir=xdg_state_root(env), sqlite_fallback=False)
    if budgets:  # app.conf budgets sit under config.toml [selfheal]
        settings = replace(settings, budget_config={**budgets, **settings.budget_config})
    return settings


def app_defaults(conf: Any, settings: Settings) -> dict[str, Any]:
    """The settings `SelfHeal(app)` adds to a user's app: only keys the user did not set."""
    wanted: dict[str, Any] = {
        # one message at a time per child: a long step must not sit on prefetched work
        "worker_prefetch_multiplier": 1,
    }
    if settings.broker_url.startswith("redis://"):
        from celery_selfheal.cluster.redis_transport import TRANSPORT

        wanted["broker_transport"] = TRANSPORT  # survives a Redis restart with a step running
    elif settings.embedded:
        wanted.update({k: v for k, v in settings.celery_conf().items() if k != "broker_url"})
    return {key: value for key, value in wanted.items() if not user_set(conf, key)}


def serializer_problems(conf: Any) -> tuple[str | None, str | None]:
    """(refusal, warning) about the app's ``accept_content``: our messages are JSON, so a worker that
    does not accept JSON cannot run them; one that also accepts pickle is worth a warning."""
    accept = [str(c) for c in (conf.accept_content or ())]
    if not any(c in ("json", "application/json") for c in accept):
        return (f"app.conf: accept_content {accept!r} excludes json; celery-selfheal's tasks and messages "
                "are JSON (add 'json')", None)
    if any(c in PICKLE for c in accept):
        return None, ("app.conf accept_content includes pickle: a worker that accepts pickle runs code from "
                      "anyone who can write to the broker (celery-selfheal sends JSON only; left as set)")
    return None, None


def defaults_line(settings: Settings, env: Mapping[str, str]) -> str | None:
    """One line naming the roots that were not configured and went under the XDG state dir."""
    root = xdg_state_root(env)
    named = [f"{what} {path}" for what, path in (("state", settings.state_dir),
                                                 ("workspaces", settings.workspace_root),
                                                 ("artifacts", settings.artifact_root))
             if path.is_relative_to(root)]
    return f"celery-selfheal: not configured, so under {root}: {', '.join(named)}" if named else None
