"""A failed attempt leaves its change as evidence: a patch that plain ``git apply`` takes on the tree
that attempt started from, and none when the change holds a secret."""

from __future__ import annotations

import subprocess
from pathlib import Path

from celery_selfheal.steps.outcome import OutcomeKind
from tests.conftest import git
from tests.engine import Engine

# attempt 1 edits a tracked file and adds a binary one; a soft reset keeps that and adds more
STEP = ("n=$(ls notes 2>/dev/null | wc -l); mkdir -p notes; echo \"note $n\" > notes/n$n.txt; "
        "printf 'edit %s\\n' $n >> README.md; printf '\\000\\001\\377' > blob.bin; echo 'connection reset'; exit 75")


def tree_after_applying(repo: Path, tmp: Path, *patches: Path) -> str:
    clone = tmp / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    for patch in patches:
        git(clone, "apply", "--binary", str(patch))  # plain git, nothing of ours
    git(clone, "add", "-A")
    return git(clone, "write-tree").strip()


def test_failed_attempts_leave_applyable_patches(engine: Engine, tmp_path: Path) -> None:
    job_id = engine.submit(STEP, budgets="step_max_attempts = 3\n")
    first = engine.run(job_id)
    assert first.kind is OutcomeKind.RETRY and first.strategy == "soft_reset"
    second = engine.run(job_id, strategy="soft_reset", retry_context=first.retry_context, task_id="t-2")
    assert second.kind is OutcomeKind.RETRY
    a1, a2 = engine.ctx.store.list_attempts(job_id, 0)
    arts = engine.ctx.artifacts(job_id)
    p1, p2 = arts.base / a1["attemptPatch"], arts.base / a2["attemptPatch"]
    assert p1.name == "step-0000-attempt-0001.patch" and p2.name == "step-0000-attempt-0002.patch"
    assert b"GIT binary patch" in p1.read_bytes()
    assert a2["attemptPatchBase"] == a1["treeAfter"]  # the soft reset started from what attempt 1 left
    assert tree_after_applying(engine.repo, tmp_path, p1) == a1["treeAfter"]
    assert tree_after_applying(engine.repo, tmp_path / "b", p1, p2) == a2["treeAfter"]
    assert "notes/n1.txt" in p2.read_text(errors="replace") and "notes/n0.txt" not in p2.read_text(errors="replace")
    artifact = (arts.attempt_state_path(0, 1)).read_text()
    assert a1["attemptPatch"] in artifact


def test_a_patch_with_a_secret_is_not_written(engine: Engine) -> None:
    token = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
    # built by the shell, since a runtime command holding a secret is refused at submit
    job_id = engine.submit(f"a=ghp_; b={token[4:20]}; c={token[20:]}; printf '%s%s%s' $a $b $c > creds.env; exit 1")
    engine.run(job_id)
    [attempt] = engine.ctx.store.list_attempts(job_id, 0)
    assert "attemptPatch" not in attempt
    assert "secret" in attempt["attemptPatchAbsent"] and token not in attempt["attemptPatchAbsent"]
    assert not (engine.ctx.artifacts(job_id).base / "patches" / "attempts").exists()


def test_an_attempt_that_changed_nothing_has_no_patch(engine: Engine) -> None:
    job_id = engine.submit("exit 1")
    engine.run(job_id)
    [attempt] = engine.ctx.store.list_attempts(job_id, 0)
    assert "attemptPatch" not in attempt and "attemptPatchAbsent" not in attempt
