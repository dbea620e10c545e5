"""The public names are pinned: scripts import them from the package root."""

from __future__ import annotations

import subprocess
import sys

import celery_selfheal

PUBLIC = ["ConfigError", "ControlError", "InputError", "ReplayError", "SelfHeal", "SelfHealError",
          "WorkspaceError", "export_artifacts", "follow_events", "job_status", "list_artifacts", "recover", "submit"]


def test_all_is_pinned() -> None:
    assert sorted(celery_selfheal.__all__) == PUBLIC
    for name in PUBLIC:
        assert getattr(celery_selfheal, name) is not None


def test_the_names_are_the_engine_s_own() -> None:
    from celery_selfheal.api import submit
    from celery_selfheal.errors import InputError
    from celery_selfheal.wiring.install import SelfHeal

    assert celery_selfheal.SelfHeal is SelfHeal and celery_selfheal.submit is submit
    assert issubclass(celery_selfheal.ControlError, celery_selfheal.InputError)
    assert celery_selfheal.InputError is InputError


def test_importing_the_pure_core_does_not_import_celery() -> None:
    code = "import sys, celery_selfheal.core.admission, celery_selfheal.core.redact; print('celery' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
