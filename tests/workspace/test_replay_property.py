"""Property: replaying the checkpoints of any sequence of edits gives exactly a straight run's tree."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from celery_selfheal.artifacts import JobArtifacts
from celery_selfheal.workspace.checkpoints import replay, workspace_matches, write_checkpoint
from celery_selfheal.workspace.git import GitWorkspace

from . import make_repo, plain_clone, run_git, worktree_tree

# Existing baseline files, new ones (spaces, unicode, new directories) and ignored ones. No name is
# also a directory of another, so every operation is possible on a plain file system.
NAMES = [
    "README.md", "src/app.py", "assets/logo.bin", "tools/run.sh", "docs/spaced name.txt",
    "a.txt", "new dir/\u00fcn\u00ef.bin", "src/deep/x.py", "build/out.o", "trace.log",
]
names = st.sampled_from(NAMES)
content = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.lists(st.sampled_from(["alpha\n", "beta\n", "gamma\n", "x = 1\n"]), max_size=30).map(
        lambda lines: "".join(lines).encode()),
)
ops = st.one_of(
    st.tuples(st.just("write"), names, content),
    st.tuples(st.just("append"), names, st.binary(min_size=1, max_size=40)),
    st.tuples(st.just("delete"), names),
    st.tuples(st.just("rename"), names, names),
    st.tuples(st.just("chmod"), names, st.booleans()),
)
steps = st.lists(st.lists(ops, max_size=4), min_size=1, max_size=5)


def apply_op(root: Path, op: tuple[Any, ...]) -> None:
    """Apply one edit; a no-op where it makes no sense (deleting a missing file, ...)."""
    kind, name = op[0], op[1]
    path = root / name
    if kind == "write":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(op[2])
    elif kind == "append" and path.exists():
        with path.open("ab") as fh:
            fh.write(op[2])
    elif kind == "delete" and path.exists():
        path.unlink()
    elif kind == "rename" and path.exists() and op[2] != name:
        target = root / op[2]
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
    elif kind == "chmod" and path.exists():
        path.chmod(0o755 if op[2] else 0o644)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("prop") / "baseline"
    return path, make_repo(path)


@pytest.fixture
def scratch() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="replay-prop-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=steps)
def test_replay_equals_straight_run(baseline: tuple[Path, str], scratch: Path, plan: list[list[Any]]) -> None:
    repo, sha = baseline
    run = Path(tempfile.mkdtemp(dir=scratch))  # one fresh directory per example
    straight = plain_clone(repo, run / "straight", sha)
    ws = GitWorkspace.create(run / "ws", str(repo), sha)
    arts = JobArtifacts(run / "artifacts", "job")
    metas = []
    for index, step in enumerate(plan):
        for op in step:
            apply_op(straight, op)
            apply_op(ws.path, op)
        metas.append(write_checkpoint(ws, arts, step_id=f"s{index}", step_index=index, attempt=1, summary=""))
    expected = worktree_tree(straight)
    assert metas[-1]["treeAfter"] == expected

    rebuilt = replay(run / "rebuilt", repo=str(repo), baseline_sha=sha, checkpoints=metas, arts=arts)
    assert rebuilt.head_tree() == expected
    assert workspace_matches(rebuilt.path, metas, sha)
    assert run_git(rebuilt.path, "rev-parse", "HEAD") == run_git(ws.path, "rev-parse", "HEAD")

    plain = plain_clone(repo, run / "plain", sha)  # the checkpoints need nothing but `git apply`
    for meta in metas:
        patch = arts.patch_path(meta["stepIndex"])
        if patch.stat().st_size:
            run_git(plain, "apply", str(patch))
    assert worktree_tree(plain) == expected
