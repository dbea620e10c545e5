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


def test_a_root_repointed_after_its_resolution_was_cached_still_confines(tmp_path: Path) -> None:
    """The root's resolution is cached per process: a root symlink moved to another folder gives
    the same answers as a fresh resolution (paths under the new target pass, a way out is refused)."""
    first, second, outside = tmp_path / "first", tmp_path / "second", tmp_path / "outside"
    for folder in (first, second, outside):
        folder.mkdir()
    root = tmp_path / "root"
    root.symlink_to(first, target_is_directory=True)
    assert JobArtifacts(root, "job-1").step_state_path(0) == root / "job-1" / "state" / "steps" / "step-0000.json"
    root.unlink()
    root.symlink_to(second, target_is_directory=True)
    assert JobArtifacts(root, "job-1").log_path(0, 1) == root / "job-1" / "logs" / "step-0000-attempt-0001.log"
    (second / "job-2").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="escapes"):
        JobArtifacts(root, "job-2").patch_path(0)
    (second / "job-3").symlink_to(first, target_is_directory=True)  # into the root it had before
    with pytest.raises(ValueError, match="escapes"):
        JobArtifacts(root, "job-3").patch_path(0)


def test_the_context_keeps_one_instance_per_job_and_every_path_is_still_checked(tmp_path: Path) -> None:
    """`Context.artifacts` hands out the same `JobArtifacts` for a job (its folder resolved once),
    yet a job folder swapped for a symlink out of the root after that is refused on the next path."""
    import shutil

    from celery_selfheal.context import build_context
    from celery_selfheal.settings import load_settings

    ctx = build_context(load_settings(env={"SELFHEAL_STATE_DIR": str(tmp_path / "state")}), sinks=[])
    arts = ctx.artifacts("job-1")
    assert ctx.artifacts("job-1") is arts and ctx.artifacts("job-2") is not arts
    arts.step_state_path(0).parent.mkdir(parents=True)
    assert arts.base.is_dir()
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.rmtree(arts.base)
    arts.base.symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="escapes"):
        ctx.artifacts("job-1").step_state_path(0)
    for n in range(100):  # bounded: the oldest are let go
        ctx.artifacts(f"job-x{n}")
    assert len(ctx._artifacts) <= 64
