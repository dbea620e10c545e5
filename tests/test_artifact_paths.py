"""Artifact paths stay under the artifact root even through symlinks (a resolved path is checked on
every call, not once per job)."""

from __future__ import annotations

from pathlib import Path

import pytest

from celery_selfheal.artifacts import JobArtifacts


def test_a_symlink_out_of_the_root_is_refused_whenever_it_appears(tmp_path: Path) -> None:
    root, outside = tmp_path / "artifacts", tmp_path / "outside"
    (root / "job-1" / "state").mkdir(parents=True)
    outside.mkdir()
    arts = JobArtifacts(root, "job-1")
    assert arts.patch_path(0) == root / "job-1" / "patches" / "steps" / "step-0000.patch"
    (root / "job-1" / "patches").symlink_to(outside, target_is_directory=True)  # appears later
    with pytest.raises(ValueError, match="escapes"):
        arts.patch_path(0)
    (root / "job-1" / "logs").symlink_to(outside / "x.log")
    with pytest.raises(ValueError, match="escapes"):
        arts.log_path(0, 1)
    assert arts.step_state_path(0).parent == root / "job-1" / "state" / "steps"
    (root / "job-2").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="escapes"):
        JobArtifacts(root, "job-2").step_state_path(0)
