"""Which `SelfHeal` a CLI command works with: the app of ``celery -A APP selfheal …``, or the ready app.

A user's own app is configured from its ``app.conf`` (`wiring.app_conf.settings_for_app`), with the
flags on top; it never falls back to the ready app or to ``./.selfheal``. The ready app resolves
flags, env and config.toml as `settings.load_settings` does.
"""

from __future__ import annotations

import os
from typing import Any

import click

#: names Celery gives an app nobody named (``celery selfheal`` without ``-A``)
ANONYMOUS_APPS = (None, "default", "__main__")
READY_APP = "celery_selfheal.app"


def celery_app_arg() -> str | None:
    """The ``-A`` value of the ``celery`` command this CLI runs under, if any."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return None
    value = ctx.find_root().params.get("app")
    return value if isinstance(value, str) and value else None


def select_context(*, state_dir: str | None = None, broker_url: str | None = None,
                   store_url: str | None = None, config_path: str | None = None) -> Any:
    """The `Context` of `select_selfheal`'s choice, for a command that only reads the store. Run as
    ``selfheal …`` that is the ready app's, built from the flags, env and config.toml as
    `select_selfheal` builds it, without importing Celery or installing the app (most of such a
    command's cost); under ``celery [-A APP] selfheal …`` it is the app's."""
    flags: dict[str, Any] = {"state_dir": state_dir, "broker_url": broker_url, "store_url": store_url,
                             "config_path": config_path}
    ctx = click.get_current_context(silent=True)
    if ctx is not None and getattr(ctx.find_root().obj, "app", None) is not None:
        return select_selfheal(**flags).context()
    from celery_selfheal.context import build_context
    from celery_selfheal.settings import load_settings

    return build_context(load_settings(**flags))


def select_selfheal(*, state_dir: str | None = None, broker_url: str | None = None,
                    store_url: str | None = None, config_path: str | None = None) -> Any:
    """The `SelfHeal` to use, with the flags applied (see the module docstring)."""
    from celery_selfheal.context import build_context
    from celery_selfheal.settings import load_settings
    from celery_selfheal.wiring.install import SelfHeal

    ctx = click.get_current_context(silent=True)
    app = getattr(ctx.find_root().obj, "app", None) if ctx is not None else None
    flags: dict[str, Any] = {"state_dir": state_dir, "broker_url": broker_url, "store_url": store_url,
                             "config_path": config_path}
    user_app = app is not None and app.main not in ANONYMOUS_APPS and app.main != "celery_selfheal"
    sh: Any = None
    if user_app:
        sh = getattr(app, "selfheal", None) or SelfHeal(app)
    if sh is not None and sh.from_app:
        from celery_selfheal.wiring.app_conf import settings_for_app

        settings = settings_for_app(app, **flags)
        _point_app_at(app, settings)
    else:
        settings = load_settings(**flags)
        if sh is None:
            from celery_selfheal.app import selfheal as sh
    # Workers we start, and the ready app if imported after this, see the same settings.
    os.environ.update(settings.as_env())
    sh.cli_app = celery_app_arg() if user_app else READY_APP
    if any(flags.values()) or sh.settings != settings:
        sh.settings = settings
        if sh.app.main == "celery_selfheal":
            sh.app.conf.update(settings.celery_conf())
        sh.use_context(build_context(settings))
    return sh


def _point_app_at(app: Any, settings: Any) -> None:
    """A broker asked for by env or flag (above app.conf) is the one this process sends to."""
    if str(app.conf.broker_url or "") == settings.broker_url:
        return
    app.conf.broker_url = settings.broker_url
    if settings.embedded:
        app.conf.update(settings.celery_conf())
