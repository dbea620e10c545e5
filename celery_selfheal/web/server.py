"""``selfheal web``: load the tokens, refuse an exposed host without one, print the login URL, run
uvicorn (its access log off: ours in `middleware` never shows a query string, where tokens ride)."""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
from collections.abc import Mapping
from types import FrameType
from typing import Any

import uvicorn

from celery_selfheal.control.requests import default_actor
from celery_selfheal.errors import InputError
from celery_selfheal.web.auth import Tokens, load_tokens
from celery_selfheal.web.sse import Feeds

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def console_tokens(selfheal: Any, host: str, token_file: str | None,
                   env: Mapping[str, str] | None = None) -> Tokens:
    """The tokens for a console on ``host``; `InputError` for a non-loopback host without an
    explicit token (a generated one would be a secret nobody on the other side was given)."""
    env = os.environ if env is None else env
    if not is_loopback(host) and not token_file and not env.get("SELFHEAL_WEB_TOKEN"):
        raise InputError(f"refusing to listen on non-loopback host {host!r} without a token: "
                         "set SELFHEAL_WEB_TOKEN or pass --token-file", where="--host")
    return load_tokens(env=env, token_file=token_file, run_dir=selfheal.settings.run_dir,
                       default_name=default_actor())


def login_url(host: str, port: int, tokens: Tokens) -> str:
    """The URL to print: with the token only when it was generated here (the user holds the others)."""
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    base = f"http://{shown}:{port}/login"
    if tokens.explicit:
        return base
    return f"{base}?token={next(iter(tokens.by_name.values()))}"


def serve(selfheal: Any, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          token_file: str | None = None) -> None:
    """Run the console in this process until interrupted."""
    from celery_selfheal.web.app import build_app

    tokens = console_tokens(selfheal, host, token_file)
    selfheal.settings.ensure_dirs()
    app = build_app(selfheal, tokens)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    store = selfheal.context().redactor.redact(selfheal.settings.store_url)
    print(f"selfheal web: store {store}, tokens from {tokens.source}; open {login_url(host, port, tokens)}",
          file=sys.stderr, flush=True)
    config = uvicorn.Config(app, host=host, port=port, access_log=False, log_level="warning", lifespan="off",
                            timeout_graceful_shutdown=3)
    try:
        ConsoleServer(config, app.state.feeds).run()
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it stopped on: exit as run/follow do
        print("selfheal web: stopped", file=sys.stderr)
        raise SystemExit(130) from None


class ConsoleServer(uvicorn.Server):
    """uvicorn's server, ending the SSE streams as soon as it is asked to stop (else it would wait
    for them, then cancel them with a traceback in the log)."""

    def __init__(self, config: uvicorn.Config, feeds: Feeds) -> None:
        super().__init__(config)
        self.feeds = feeds

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.feeds.close()
        super().handle_exit(sig, frame)
