"""``selfheal jobs``: newest first, status filter, limit, JSON lines, on both stores (real CLI process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from celery_selfheal.artifacts import atomic_write
from celery_selfheal.context import build_context
from celery_selfheal.settings import load_settings

SELFHEAL = str(Path(sys.executable).parent / "selfheal")


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SELFHEAL, *args], capture_output=True, text=True, env=env, timeout=60)


def seed(env: dict[str, str], n: int) -> list[str]:
    ctx = build_context(load_settings(env=env), sinks=[])
    ids = []
    for i in range(n):
        job_id = f"job-{i:03d}"
        ctx.store.create_job({"jobId": job_id, "status": "queued", "epoch": 0, "currentStep": 0,
                              "spec": {"objective": f"objective {i}\x1b[31m"}, "steps": [],
                              "createdAt": f"2026-12-01T10:00:{i:02d}.000Z", "updatedAt": "x"})
        ids.append(job_id)
    ctx.store.update_job("job-001", {"status": "failed", "finishedAt": "2026-12-01T11:00:00.000Z"})
    return ids


@pytest.fixture(params=["sqlite", "redis"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SELFHEAL_")}
    base["SELFHEAL_STATE_DIR"] = str(tmp_path / "state")
    if request.param == "redis":
        base["SELFHEAL_STORE_URL"] = request.getfixturevalue("redis_url")
    return base


def test_jobs_lists_newest_first_with_filter_and_limit(env: dict[str, str]) -> None:
    seed(env, 5)
    out = cli(env, "jobs", "--json")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["jobId"] for r in rows] == ["job-004", "job-003", "job-002", "job-001", "job-000"]
    assert set(rows[0]) == {"jobId", "status", "currentStep", "createdAt", "updatedAt", "finishedAt", "objective"}
    failed = [json.loads(x) for x in cli(env, "jobs", "--json", "--status", "failed").stdout.splitlines()]
    assert [(r["jobId"], r["finishedAt"]) for r in failed] == [("job-001", "2026-12-01T11:00:00.000Z")]
    assert len(cli(env, "jobs", "--json", "--limit", "2").stdout.splitlines()) == 2
    table = cli(env, "jobs").stdout
    assert table.splitlines()[0].split()[:3] == ["JOB", "STATUS", "STEP"]
    assert "\x1b" not in table and "objective 4\\x1b[31m" in table  # stored text cannot drive the terminal


def test_jobs_rejects_a_bad_status_in_one_line(env: dict[str, str]) -> None:
    out = cli(env, "jobs", "--status", "bogus")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "bogus" in out.stderr


def test_listing_jobs_builds_no_redactor_and_loads_only_its_store(env: dict[str, str]) -> None:
    """A read-only listing never redacts anything (stored text was redacted when it was written):
    it must not pay for the secret scanner (~0.3 s), nor import redis-py for a SQLite store."""
    seed(env, 2)
    probe = (
        "import sys\n"
        "from celery_selfheal.cli.main import selfheal\n"
        "from celery_selfheal.core import redact_catalog\n"
        "try:\n"
        "    selfheal.main(['jobs', '--json'])\n"
        "finally:\n"
        "    print('catalogs built', redact_catalog.catalog_for.cache_info().currsize)\n"
        "    print('redis imported', 'redis' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "catalogs built 0" in out.stdout and out.stdout.count('"jobId"') == 2, out.stdout
    assert f"redis imported {'SELFHEAL_STORE_URL' in env}" in out.stdout, out.stdout


@pytest.mark.parametrize("command", [["jobs", "--json"], ["status", "job-001", "--json"], ["events", "job-001"],
                                     ["artifacts", "job-001"]])
def test_read_only_commands_import_no_celery_and_answer_as_under_celery(env: dict[str, str],
                                                                        command: list[str]) -> None:
    """Run as ``selfheal …``, a read-only command builds its context from flags, env and config.toml
    without importing Celery (a third of a second per command); its answer is the one the same
    command gives as ``celery -A celery_selfheal.app selfheal …``."""
    seed(env, 2)
    ctx = build_context(load_settings(env=env), sinks=[])
    ctx.store.append_event("job-001", {"event": "task.job.started", "jobId": "job-001", "ts": "2026-12-01T10:00:01Z"})
    atomic_write(ctx.artifacts("job-001").log_path(0, 1), "output\n")
    probe = (
        "import sys\n"
        "from celery_selfheal.cli.main import selfheal\n"
        "try:\n"
        f"    selfheal.main({command!r})\n"
        "finally:\n"
        "    print('celery imported', 'celery' in sys.modules, file=sys.stderr)\n")
    alone = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60)
    assert "celery imported False" in alone.stderr, alone.stderr
    celery = str(Path(sys.executable).parent / "celery")
    mounted = subprocess.run([celery, "-A", "celery_selfheal.app", "selfheal", *command], capture_output=True,
                             text=True, env=env, timeout=60)
    assert (alone.returncode, alone.stdout) == (mounted.returncode, mounted.stdout), (alone, mounted)
    assert alone.returncode == 0, alone
    shown = ("job-001", "task.job.started", "logs/step-0000-attempt-0001.log")
    assert any(seen in alone.stdout for seen in shown), alone


@pytest.mark.parametrize("command", [["jobs"], ["status", "job-001"], ["events", "job-001"], ["artifacts", "job-001"]])
@pytest.mark.parametrize(("config", "message"), [
    ("[worker]\nlease_ttl_seconds = 'soon'\n", "[worker] lease_ttl_seconds: must be a number, got str 'soon'"),
    ("[[redaction.rules]]\nid = 'mine'\nkeyword = 'acme_'\nregex = 'acme_[a-z0-9]{24}'\nprefilter = 'a(?<=b)'\n",
     "[redaction] rules: entry 0 'mine': prefilter"),
])
def test_read_only_commands_refuse_a_bad_config_in_one_line(tmp_path: Path, command: list[str], config: str,
                                                           message: str) -> None:
    """Built without the app, a read-only command still reads the configuration the app would and
    refuses a bad one in one line naming file, table and key, exit 2, touching no state."""
    (tmp_path / "config.toml").write_text(config)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SELFHEAL_", "STATSD_"))}
    env["SELFHEAL_STATE_DIR"] = str(tmp_path / "state")
    out = subprocess.run([SELFHEAL, *command], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 2, out
    [line] = out.stderr.strip().splitlines()
    assert line.startswith("selfheal: error: ") and "config.toml: " + message in line, line
    assert not (tmp_path / "state").exists()
