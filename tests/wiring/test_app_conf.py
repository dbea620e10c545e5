"""A user's own app: settings from app.conf under config.toml, env and flags; what SelfHeal(app)
sets (only what the user did not) and when it refuses. Real Celery apps, no worker needed."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from celery_selfheal.errors import ConfigError
from celery_selfheal.wiring.app_conf import serializer_problems, settings_for_app
from celery_selfheal.wiring.install import SelfHeal
from celery_selfheal.wiring.startup import refusal, startup_notes

REDIS = "redis://127.0.0.1:6390/3"


def user_app(**conf: Any) -> Celery:
    app = Celery(f"user-{uuid.uuid4().hex[:6]}")
    app.config_from_object(conf)
    return app


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.chdir(tmp_path)  # no ./config.toml here
    return {"XDG_STATE_HOME": str(tmp_path / "xdg")}


def test_broker_and_store_come_from_the_app_and_roots_go_under_xdg(env: dict[str, str], tmp_path: Path) -> None:
    s = settings_for_app(user_app(broker_url=REDIS), env=env)
    assert (s.broker_url, s.store_url) == (REDIS, REDIS)
    root = tmp_path / "xdg" / "selfheal"
    assert s.state_dir == root and s.workspace_root.is_relative_to(root) and s.artifact_root.is_relative_to(root)
    assert not s.embedded


def test_order_app_conf_then_config_toml_then_env_then_flags(env: dict[str, str], tmp_path: Path) -> None:
    app = user_app(broker_url=REDIS, selfheal_artifact_root="/a/app", selfheal_workspace_root="/w/app",
                   selfheal_store_url="redis://127.0.0.1:6390/4", selfheal_step_timeout_seconds=30,
                   selfheal_step_max_attempts=5)
    s = settings_for_app(app, env=env)
    assert (str(s.artifact_root), str(s.workspace_root), s.store_url) == ("/a/app", "/w/app", "redis://127.0.0.1:6390/4")
    assert s.budget_config == {"step_timeout_seconds": 30.0, "step_max_attempts": 5}
    config = tmp_path / "conf.toml"
    config.write_text('[state]\nartifact_root = "/a/toml"\n[selfheal]\nstep_timeout_seconds = 40\n')
    app.conf.selfheal_config = str(config)
    s = settings_for_app(app, env=env)
    assert str(s.artifact_root) == "/a/toml" and str(s.workspace_root) == "/w/app"
    assert s.budget_config == {"step_timeout_seconds": 40, "step_max_attempts": 5}
    s = settings_for_app(app, env={**env, "SELFHEAL_ARTIFACT_ROOT": "/a/env"})
    assert str(s.artifact_root) == "/a/env"
    s = settings_for_app(app, env={**env, "SELFHEAL_STORE_URL": "redis://127.0.0.1:6390/5"},
                         store_url="redis://127.0.0.1:6390/6")
    assert s.store_url == "redis://127.0.0.1:6390/6"


@pytest.mark.parametrize(("conf", "message"), [
    ({"selfheal_step_timeout_seconds": "soon"}, "app.conf: selfheal_step_timeout_seconds: must be a number"),
    ({"selfheal_stor_url": "redis://x"}, "app.conf: selfheal_stor_url: unknown key"),
    ({"selfheal_store_url": 5}, "app.conf: selfheal_store_url: must be a string"),
])
def test_bad_selfheal_keys_are_one_line_naming_the_key(env: dict[str, str], conf: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        settings_for_app(user_app(broker_url=REDIS, **conf), env=env)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_a_non_redis_broker_needs_a_store_url(env: dict[str, str]) -> None:
    for conf in ({"broker_url": "amqp://guest:secret@127.0.0.1:1//"}, {}):  # {}: Celery's default amqp
        with pytest.raises(ConfigError, match="a store URL is required with the broker amqp") as err:
            settings_for_app(user_app(**conf), env=env)
        assert "secret" not in str(err.value)
    s = settings_for_app(user_app(broker_url="amqp://127.0.0.1:1//", selfheal_store_url=REDIS), env=env)
    assert s.store_url == REDIS


def test_selfheal_leaves_user_settings_alone_and_names_what_it_sets(env: dict[str, str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", env["XDG_STATE_HOME"])
    for name in ("SELFHEAL_BROKER_URL", "SELFHEAL_STORE_URL", "SELFHEAL_STATE_DIR", "SELFHEAL_CONFIG",
                 "SELFHEAL_ARTIFACT_ROOT", "SELFHEAL_WORKSPACE_ROOT"):
        monkeypatch.delenv(name, raising=False)
    app = Celery(f"user-{uuid.uuid4().hex[:6]}")
    sh = SelfHeal(app)  # before the app is configured: what it sets is decided when it is
    app.config_from_object({"broker_url": REDIS, "task_serializer": "pickle", "accept_content": ["json", "pickle"],
                            "result_serializer": "pickle", "worker_prefetch_multiplier": 7})
    assert app.conf.task_serializer == "pickle" and app.conf.result_serializer == "pickle"
    assert app.conf.accept_content == ["json", "pickle"] and app.conf.worker_prefetch_multiplier == 7
    assert app.conf.task_track_started is False
    assert set(sh.added) == {"broker_transport"} and app.conf.broker_transport == sh.added["broker_transport"]
    # our tasks are JSON whatever the app's serializer
    assert {app.tasks[n].serializer for n in ("selfheal.run_step", "selfheal.apply_control")} == {"json"}
    notes = startup_notes(sh, app.conf)
    assert "broker_transport=" in notes[0] and "worker_prefetch_multiplier" not in notes[0]
    assert any("not configured, so under" in n and "workspaces" in n for n in notes)
    assert sum("accept_content includes pickle" in n for n in notes) == 1
    assert refusal(sh, app.conf) is None


def test_unset_prefetch_is_set_to_one() -> None:
    app = user_app(broker_url=REDIS)
    sh = SelfHeal(app)
    app.conf.broker_url  # noqa: B018 - configures the app
    assert sh.added["worker_prefetch_multiplier"] == 1 and app.conf.worker_prefetch_multiplier == 1


def test_accept_content_without_json_is_refused() -> None:
    assert serializer_problems(user_app(accept_content=["pickle"]).conf)[0] is not None
    assert serializer_problems(user_app(accept_content=["application/json"]).conf) == (None, None)
    sh = SelfHeal(user_app(broker_url=REDIS, accept_content=["msgpack"]))
    why = refusal(sh, sh.app.conf)
    assert why is not None and "excludes json" in why
