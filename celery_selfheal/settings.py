"""Where state lives and how to reach it: flags > env > ``config.toml`` > defaults.

One `Settings` object is shared by the CLI, the ready Celery app and the workers, so that
``selfheal run``, ``celery -A celery_selfheal.app worker`` and ``celery … inspect`` all agree on the
broker, the store and the artifact location.

``config.toml`` (``SELFHEAL_CONFIG`` or ``./config.toml``) tables:

- ``[selfheal]``: budget defaults (REQ-02 key names), validated by `core.budgets`;
- ``[state]``: ``state_dir``, ``broker_url``, ``store_url``, ``artifact_root``, ``workspace_root``;
- ``[statsd]``: ``host``, ``port``, ``prefix``, ``tag_style``, ``enabled``;
- ``[redaction]``: ``extra_patterns``, ``extra_env_names``, ``allowlist``, ``extra_keys``, ``rules``;
- ``[worker]``, ``[retention]``, ``[web]``: see `core.config_schema`, which types and bounds every
  key of every table but ``[selfheal]``.

Everything is validated here, once per process: a bad key or value in the file or in an env var
beside it (``STATSD_PORT``, ``SELFHEAL_LEASE_TTL_SECONDS``, ``STEP_TIMEOUT_SECONDS``...) is a
one-line `ConfigError` naming the file, table and key, or the variable.

Without a broker URL everything is embedded under the state dir (default ``./.selfheal``):
a ``filesystem://`` broker, a SQLite store, artifacts and workspaces.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery_selfheal.core import config_schema as schema
from celery_selfheal.core.budgets import env_overrides, resolve_budgets, validate_overrides
from celery_selfheal.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_STATE_DIR = ".selfheal"
KNOWN_TABLES = set(schema.KNOWN_TABLES)
STATE_KEYS = set(schema.TABLES["state"])


@dataclass(frozen=True)
class Settings:
    """Resolved locations and options of one process."""

    #: root of everything embedded (broker folders, SQLite, artifacts, workspaces, run files)
    state_dir: Path
    #: Celery broker URL; ``filesystem://`` for the embedded default
    broker_url: str
    #: state store URL: ``sqlite:///…`` or ``redis://…``
    store_url: str
    #: where ``<job id>/…`` artifacts go (must be shared by all workers in a cluster)
    artifact_root: Path
    #: where this worker keeps job workspaces (may differ per worker/host)
    workspace_root: Path
    #: the config file that was read, if any
    config_path: Path | None = None
    #: raw ``[selfheal]`` budget table from config.toml (validated by core.budgets)
    budget_config: Mapping[str, Any] = field(default_factory=dict)
    #: ``[statsd]`` table
    statsd: Mapping[str, Any] = field(default_factory=dict)
    #: ``[redaction]`` table
    redaction: Mapping[str, Any] = field(default_factory=dict)
    #: ``[worker]`` table (lease and sweep periods, Redis visibility timeout, RabbitMQ consumer timeout)
    worker: Mapping[str, Any] = field(default_factory=dict)
    #: ``[retention]`` table (what ``gc`` removes when)
    retention: Mapping[str, Any] = field(default_factory=dict)
    #: ``[web]`` table (console host, port, token file)
    web: Mapping[str, Any] = field(default_factory=dict)

    @property
    def embedded(self) -> bool:
        """True when the broker is the local ``filesystem://`` one."""
        return self.broker_url.startswith("filesystem://")

    @property
    def broker_dir(self) -> Path:
        return self.state_dir / "broker"

    @property
    def run_dir(self) -> Path:
        """Per-host runtime files: worker lock, running-attempt registry, prompts."""
        return self.state_dir / "run"

    def broker_transport_options(self) -> dict[str, Any]:
        """Transport options for the embedded filesystem broker (fast polling, shared folders)."""
        if not self.embedded:
            return {}
        queue = str(self.broker_dir / "queue")
        return {
            "data_folder_in": queue,
            "data_folder_out": queue,
            "control_folder": str(self.broker_dir / "control"),
            "processed_folder": str(self.broker_dir / "processed"),
            "store_processed": False,
            # kombu's virtual transports poll; 1 s default would add a second to every step.
            "polling_interval": 0.05,
        }

    def celery_conf(self) -> dict[str, Any]:
        """The broker part of a Celery app's configuration for these settings."""
        conf: dict[str, Any] = {"broker_url": self.broker_url,
                                "broker_transport_options": self.broker_transport_options()}
        if self.embedded:
            from celery_selfheal.embedded.transport import TRANSPORT

            conf["broker_transport"] = TRANSPORT
        return conf

    def ensure_dirs(self) -> None:
        """Create the folders the embedded broker and the local files need (idempotent)."""
        for path in (self.state_dir, self.run_dir, self.artifact_root, self.workspace_root):
            path.mkdir(parents=True, exist_ok=True)
        if self.embedded:
            for sub in ("queue", "control", "processed"):
                (self.broker_dir / sub).mkdir(parents=True, exist_ok=True)

    def as_env(self) -> dict[str, str]:
        """The env vars that make a child process (a worker we start) resolve the same settings."""
        env = {
            "SELFHEAL_STATE_DIR": str(self.state_dir),
            "SELFHEAL_BROKER_URL": self.broker_url,
            "SELFHEAL_STORE_URL": self.store_url,
            "SELFHEAL_ARTIFACT_ROOT": str(self.artifact_root),
            "SELFHEAL_WORKSPACE_ROOT": str(self.workspace_root),
        }
        if self.config_path is not None:
            env["SELFHEAL_CONFIG"] = str(self.config_path)
        return env


def read_config(path: Path) -> dict[str, Any]:
    """Parse a config.toml; one-line `ConfigError` naming the file on bad TOML or unknown tables."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", where=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", where=str(path)) from None
    for table, value in data.items():
        if table not in KNOWN_TABLES:
            raise ConfigError(f"unknown table [{table}] (known: {', '.join(sorted(KNOWN_TABLES))})",
                              where=str(path))
        if not isinstance(value, dict):
            raise ConfigError(f"[{table}] must be a table", where=str(path))
        if table == "selfheal":
            data[table] = validate_overrides(value, where=f"{path}: [selfheal]", sep=" ")
        else:
            data[table] = schema.validate_table(table, value, where=str(path))
    return data


def find_config(env: Mapping[str, str], explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The config file to read: explicit flag, ``SELFHEAL_CONFIG``, or ``./config.toml`` if present."""
    if explicit:
        return Path(explicit)
    if env.get("SELFHEAL_CONFIG"):
        return Path(env["SELFHEAL_CONFIG"])
    local = Path("config.toml")
    return local if local.is_file() else None


def load_settings(
    *,
    state_dir: str | os.PathLike[str] | None = None,
    broker_url: str | None = None,
    store_url: str | None = None,
    config_path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    app_layer: Mapping[str, str] | None = None,
    default_state_dir: Path | None = None,
    sqlite_fallback: bool = True,
) -> Settings:
    """Resolve settings from flags (arguments), env, config.toml and defaults, in that order.

    A user's own app (`celery_selfheal.wiring.app_conf`) adds ``app_layer`` (its ``broker_url`` and
    ``selfheal_*`` keys, below config.toml), its own ``default_state_dir`` and
    ``sqlite_fallback=False``: a broker that is neither Redis nor embedded then needs a store URL."""
    env = os.environ if env is None else env
    layer: Mapping[str, str] = app_layer or {}
    path = find_config(env, config_path or layer.get("config"))
    config = read_config(path) if path is not None else {}
    # every process checks the env overrides too, before it takes any work
    schema.validate_env(env)
    resolve_budgets((f"{path or 'config.toml'}: [selfheal]", config.get("selfheal", {})), ("env", env_overrides(env)))
    state_cfg: Mapping[str, str] = config.get("state", {})

    def pick(flag: Any, env_name: str, key: str) -> str | None:
        if flag:
            return str(flag)
        if env.get(env_name):
            return env[env_name]
        value = state_cfg.get(key) or layer.get(key)
        return value or None

    state = Path(pick(state_dir, "SELFHEAL_STATE_DIR", "state_dir") or default_state_dir
                 or DEFAULT_STATE_DIR).absolute()
    broker = pick(broker_url, "SELFHEAL_BROKER_URL", "broker_url") or "filesystem://"
    store = pick(store_url, "SELFHEAL_STORE_URL", "store_url")
    if store is None and not broker.startswith(("filesystem://", "redis://", "rediss://")):
        # a SQLite file beside a RabbitMQ broker would silently split state across hosts
        where = ("celery-selfheal" if not sqlite_fallback else
                 "--broker" if broker_url else "SELFHEAL_BROKER_URL / [state] broker_url")
        raise ConfigError(f"a store URL is required with the broker {broker.split('://', 1)[0]}:// (give "
                          "SELFHEAL_STORE_URL=redis://HOST:PORT/DB, --store, [state] store_url"
                          + (" or selfheal_store_url in app.conf)" if not sqlite_fallback else ")"), where=where)
    if store is None:
        # A cluster broker without a store URL would silently split state across hosts.
        store = broker if broker.startswith(("redis://", "rediss://")) else f"sqlite:///{state / 'selfheal.db'}"
    if not store.startswith(("sqlite://", "redis://", "rediss://", "unix://")):
        raise ConfigError(f"unsupported store URL {store!r} (use sqlite:///PATH or redis://HOST:PORT/DB)",
                          where="--store" if store_url else "SELFHEAL_STORE_URL / [state] store_url")
    artifacts = Path(pick(None, "SELFHEAL_ARTIFACT_ROOT", "artifact_root") or state / "artifacts").absolute()
    workspaces = Path(pick(None, "SELFHEAL_WORKSPACE_ROOT", "workspace_root") or state / "workspaces").absolute()
    return Settings(
        state_dir=state,
        broker_url=broker,
        store_url=store,
        artifact_root=artifacts,
        workspace_root=workspaces,
        config_path=path.absolute() if path is not None else None,
        budget_config=config.get("selfheal", {}),
        statsd=config.get("statsd", {}),
        redaction=config.get("redaction", {}),
        worker=config.get("worker", {}),
        retention=config.get("retention", {}),
        web=config.get("web", {}),
    )
