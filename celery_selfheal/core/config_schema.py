"""The schema of config.toml and of the env vars beside it: per table, key -> kind, bounds, default, doc.

Pure (no I/O): `validate_table` and `validate_env` return canonical values or raise a one-line
`ConfigError` naming the file, table and key (or the env var). ``[selfheal]`` is the REQ-02 budget
table, validated by `core.budgets`; every other table is described here as plain data, so adding a
key is one line in `TABLES`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from celery_selfheal.core.budgets import MAX_SECONDS, format_key
from celery_selfheal.errors import ConfigError

_DURATION = re.compile(r"(\d+)([smhd])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``"7d"``, ``"12h"``, ``"30m"``, ``"45s"``, ``"0s"`` -> seconds; `ValueError` otherwise."""
    match = _DURATION.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"must be a duration like 7d, 12h, 30m or 45s, got {text!r}")
    seconds = float(int(match.group(1)) * _UNIT[match.group(2)])
    if seconds > MAX_SECONDS:
        raise ValueError(f"must be at most {MAX_SECONDS / 86400:g}d, got {text!r}")
    return seconds


@dataclass(frozen=True)
class Key:
    """One key of a config table."""

    #: ``str``, ``int``, ``float``, ``bool``, ``strings``, ``regexes``, ``tables``, ``choice``, ``duration``
    kind: str
    #: value when the key is absent (None: not set)
    default: Any
    #: one line for the docs and for ``unknown key`` hints
    doc: str
    #: inclusive bounds of numbers
    low: float | None = None
    high: float | None = None
    #: allowed values of a ``choice``
    choices: tuple[str, ...] = ()
    #: the env var that overrides the key (validated by `validate_env`)
    env: str | None = None


def _seconds(doc: str, env: str | None = None, low: float = 0.001, default: float | None = None) -> Key:
    return Key("float", default, doc, low=low, high=MAX_SECONDS, env=env)


TABLES: dict[str, dict[str, Key]] = {
    "state": {
        "state_dir": Key("str", ".selfheal", "embedded state directory", env="SELFHEAL_STATE_DIR"),
        "broker_url": Key("str", None, "Celery broker URL (default: embedded filesystem://)",
                          env="SELFHEAL_BROKER_URL"),
        "store_url": Key("str", None, "state store URL, sqlite:///PATH or redis://HOST:PORT/DB",
                         env="SELFHEAL_STORE_URL"),
        "artifact_root": Key("str", None, "artifact root shared by all workers", env="SELFHEAL_ARTIFACT_ROOT"),
        "workspace_root": Key("str", None, "where this worker keeps workspaces", env="SELFHEAL_WORKSPACE_ROOT"),
    },
    "statsd": {
        "enabled": Key("bool", False, "send StatsD metrics"),
        "host": Key("str", None, "StatsD host (setting it enables StatsD)", env="STATSD_HOST"),
        "port": Key("int", 8125, "StatsD UDP port", low=1, high=65535, env="STATSD_PORT"),
        "prefix": Key("str", "", "metric name prefix", env="STATSD_PREFIX"),
        "tag_style": Key("choice", "dogstatsd", "how tags are written", choices=("dogstatsd", "telegraf", "none"),
                         env="STATSD_TAG_STYLE"),
    },
    "redaction": {
        "extra_patterns": Key("regexes", (), "extra regexes whose whole match is redacted"),
        "extra_env_names": Key("strings", (), "env var names whose values are secret"),
        "allowlist": Key("strings", (), "exact strings never redacted"),
        "extra_keys": Key("strings", (), "extra key names redacted in structured payloads"),
        "rules": Key("tables", (), "extra token rules ([[redaction.rules]]: id, keyword, regex, ...)"),
    },
    "worker": {
        "lease_ttl_seconds": _seconds("attempt lease time to live", "SELFHEAL_LEASE_TTL_SECONDS", low=0.5),
        "sweep_interval_seconds": _seconds("how often workers look for expired leases",
                                           "SELFHEAL_SWEEP_INTERVAL_SECONDS"),
        "visibility_timeout_seconds": _seconds("Redis visibility_timeout", "SELFHEAL_VISIBILITY_TIMEOUT", low=1),
        "consumer_timeout_seconds": _seconds("the RabbitMQ server's consumer_timeout (default 1800)",
                                             "SELFHEAL_CONSUMER_TIMEOUT", low=1),
    },
    "retention": {
        "succeeded_workspace_max_age": Key("duration", None, "age after which `gc` removes the workspaces "
                                           "of succeeded jobs (7d, 12h, 30m, 45s)"),
    },
    "web": {
        "host": Key("str", "127.0.0.1", "console bind address"),
        "port": Key("int", 8765, "console port", low=1, high=65535),
        "token_file": Key("str", None, "file holding the console's bearer token"),
    },
}
#: every table of config.toml (``[selfheal]`` is the budget table of core.budgets)
KNOWN_TABLES: tuple[str, ...] = ("selfheal", *TABLES)


def _number(key: Key, value: Any) -> int | float:
    if key.kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"must be an integer, got {type(value).__name__} {value!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value!r}")
    if key.low is not None and value < key.low:
        raise ValueError(f"must be >= {key.low:g}, got {value!r}")
    if key.high is not None and value > key.high:
        raise ValueError(f"must be <= {key.high:g}, got {value!r}")
    return int(value) if key.kind == "int" else float(value)


def _strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"must be a list of strings, got {value!r}")
    return tuple(value)


def _regexes(value: Any) -> tuple[str, ...]:
    out = _strings(value)
    for pattern in out:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"regex {pattern!r} does not compile: {exc}") from None
        if re.fullmatch(pattern, ""):
            raise ValueError(f"regex {pattern!r} matches the empty string")
    return out


def _tables(value: Any) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, dict) for v in value):
        raise ValueError("must be an array of tables")
    return tuple(dict(v) for v in value)


def _scalar(kind: type, name: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if not isinstance(value, kind):
            raise ValueError(f"must be {name}, got {type(value).__name__} {value!r}")
        return value
    return check


def check_value(key: Key, value: Any) -> Any:
    """The canonical value of ``value`` for ``key``; `ValueError` (one line) when it is not one."""
    if key.kind in ("int", "float"):
        return _number(key, value)
    if key.kind == "choice":
        if value not in key.choices:
            raise ValueError(f"must be one of {', '.join(key.choices)}, got {value!r}")
        return value
    if key.kind == "duration":
        return parse_duration(_scalar(str, "a duration string")(value))
    checks: dict[str, Callable[[Any], Any]] = {"str": _scalar(str, "a string"), "bool": _scalar(bool, "true or false"),
                                               "strings": _strings, "regexes": _regexes,
                                               "tables": _tables}
    return checks[key.kind](value)


def validate_table(table: str, values: Any, *, where: str) -> dict[str, Any]:
    """Check one table (not ``[selfheal]``) of a config file; errors read ``WHERE: [table] key: ...``."""
    schema = TABLES[table]
    if not isinstance(values, Mapping):
        raise ConfigError(f"must be a table, got {type(values).__name__}", where=f"{where}: [{table}]")
    out: dict[str, Any] = {}
    for name, value in values.items():
        at = f"{where}: [{table}] {format_key(name)}"
        if name not in schema:
            raise ConfigError(f"unknown key (known: {', '.join(schema)})", where=at)
        try:
            out[name] = check_value(schema[name], value)
        except ValueError as exc:
            raise ConfigError(str(exc), where=at) from None
    return out


def parse_env_value(key: Key, raw: str) -> Any:
    """An env var's text as a value of ``key`` (numbers parsed first); `ValueError` when it is not one."""
    text = raw.strip()
    if key.kind in ("int", "float"):
        try:
            number: float = int(text) if key.kind == "int" else float(text)
        except ValueError:
            raise ValueError(f"must be {'an integer' if key.kind == 'int' else 'a number'}, got {raw!r}") from None
        return check_value(key, number)
    if key.kind == "choice":
        return check_value(key, text.lower())
    return check_value(key, raw)


def validate_env(env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """The env overrides of every table present in ``env`` (``{table: {key: value}}``); an empty
    variable counts as unset. Errors read ``env VAR: ...``."""
    out: dict[str, dict[str, Any]] = {}
    for table, schema in TABLES.items():
        for name, key in schema.items():
            raw = env.get(key.env) if key.env else None
            if raw is None or not raw.strip():
                continue
            try:
                out.setdefault(table, {})[name] = parse_env_value(key, raw)
            except ValueError as exc:
                raise ConfigError(str(exc), where=f"env {key.env}") from None
    return out


def defaults(table: str) -> dict[str, Any]:
    """The defaults of one table (keys without a default are left out)."""
    return {name: key.default for name, key in TABLES[table].items() if key.default is not None}
