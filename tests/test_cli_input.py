"""Bad input: exit 2, one line naming the file and the key or step, nothing created."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from celery_selfheal.cli.main import selfheal


def _job(base_repo: Path, **job: object) -> dict:
    base: dict = {"job": {"objective": "o", "repo": str(base_repo), "ref": "main", "runtime": ["true"]},
                  "steps": [{"id": "a", "instructions": "do"}]}
    base["job"].update(job)
    return base


CASES = [
    ("invalid toml", "toml", "[job\nobjective=", "invalid TOML"),
    ("no steps", "json", lambda r: {**_job(r), "steps": []}, "steps"),
    ("duplicate step ids", "json",
     lambda r: {**_job(r), "steps": [{"id": "a", "instructions": "x"}, {"id": "a", "instructions": "y"}]}, "'a'"),
    ("unsafe step id", "json", lambda r: {**_job(r), "steps": [{"id": "../x", "instructions": "x"}]}, "id"),
    ("wrong type", "json", lambda r: _job(r, objective=5), "objective"),
    ("negative timeout", "json",
     lambda r: {**_job(r), "steps": [{"id": "a", "instructions": "x", "step_timeout_seconds": -1}]},
     "step_timeout_seconds"),
    ("missing repo", "json", lambda r: {"job": {k: v for k, v in _job(r)["job"].items() if k != "repo"},
                                        "steps": _job(r)["steps"]}, "repo"),
    ("missing ref", "json", lambda r: {"job": {k: v for k, v in _job(r)["job"].items() if k != "ref"},
                                       "steps": _job(r)["steps"]}, "ref"),
    ("unknown ref", "json", lambda r: _job(r, ref="no-such-branch"), "ref"),
    ("repo does not exist", "json", lambda r: _job(r, repo=str(r / "nope")), "repo"),
    ("unknown key", "json", lambda r: _job(r, objectiv="typo"), "objectiv"),
    ("secret in runtime", "json", lambda r: _job(r, runtime=["agent", "--token=ghp_" + "a" * 36]), "runtime"),
]


@pytest.mark.parametrize("name,fmt,content,needle", CASES, ids=[c[0] for c in CASES])
def test_bad_job_file_exit_2_one_line_nothing_created(tmp_path: Path, make_repo, name, fmt, content,
                                                      needle) -> None:
    repo = make_repo()
    path = tmp_path / f"job.{fmt}"
    text = content if isinstance(content, str) else json.dumps(content(repo))
    path.write_text(text)
    state = tmp_path / "state"
    result = CliRunner().invoke(selfheal, ["submit", str(path), "--state-dir", str(state)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert str(path) in lines[0] and needle in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert not state.exists(), "a rejected submission must not create state"


def test_missing_file_and_unknown_job(tmp_path: Path) -> None:
    state = tmp_path / "state"
    runner = CliRunner()
    res = runner.invoke(selfheal, ["submit", str(tmp_path / "nope.toml"), "--state-dir", str(state)])
    assert res.exit_code == 2 and "no such file" in res.output
    res = runner.invoke(selfheal, ["status", "job-unknown", "--state-dir", str(state)])
    assert res.exit_code == 2 and "unknown job" in res.output


def test_console_script_and_celery_entry_point(tmp_path: Path, make_repo) -> None:
    """The real entry points: `selfheal` and `celery -A celery_selfheal.app selfheal`."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[job]\n")
    bin_dir = Path(sys.executable).parent
    for argv in ([str(bin_dir / "selfheal")],
                 [sys.executable, "-m", "celery", "-A", "celery_selfheal.app", "selfheal"]):
        proc = subprocess.run([*argv, "submit", str(bad), "--state-dir", str(tmp_path / "s")],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, (argv, proc.stdout, proc.stderr)
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert str(bad) in proc.stderr
