"""Replay's in-memory objects and its one pack (`workspace.memodb`) and the fallbacks to the CLI,
checked with git itself (``fsck --full --strict``, ``cat-file``)."""

from __future__ import annotations

import random
import struct
from pathlib import Path
from typing import Any

import pygit2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from celery_selfheal.workspace import libgit, memodb
from celery_selfheal.workspace.checkpoints import replay, workspace_matches
from celery_selfheal.workspace.git import GitWorkspace
from celery_selfheal.workspace.patch_stack import PatchStack

from . import BINARY, make_repo, run_git, worktree_tree
from .test_checkpoints import STEPS, checkpointed_job


def _fsck(path: Path) -> None:
    run_git(path, "fsck", "--full", "--strict", "--no-dangling")


def _loose(path: Path) -> set[str]:
    objects = path / ".git" / "objects"
    return {f"{d.name}{f.name}" for d in objects.iterdir() if len(d.name) == 2 for f in d.iterdir()}


@pytest.fixture(autouse=True)
def _private_scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Scratch repositories in a directory of this test's own: other test processes replay in
    /dev/shm at the same time, and their scratch directories are not this test's leftovers."""
    private = tmp_path / "scratch"
    private.mkdir()
    monkeypatch.setattr(memodb, "_memory_tmp", lambda: str(private))


def _scratch_dirs() -> set[str]:
    parent = Path(memodb._memory_tmp() or "/nonexistent")
    return {p.name for p in parent.glob("selfheal-replay-*")}


def _decode_header(data: bytes) -> tuple[int, int, int]:
    """(type, size, header length) as git reads a pack entry's header (gitformat-pack)."""
    kind, size, shift, i = (data[0] >> 4) & 7, data[0] & 0x0F, 4, 0
    while data[i] & 0x80:
        i += 1
        size |= (data[i] & 0x7F) << shift
        shift += 7
    return kind, size, i + 1


@given(kind=st.sampled_from([1, 2, 3, 4]), size=st.integers(min_value=0, max_value=2**40))
def test_entry_header_round_trips(kind: int, size: int) -> None:
    header = memodb._header(kind, size)
    assert _decode_header(header + b"\0") == (kind, size, len(header))


def test_index_moves_big_offsets_to_the_8_byte_table() -> None:
    entries = [(bytes([1]) + bytes(19), 12, 7), (bytes([2]) + bytes(19), 2**31 + 5, 9)]
    idx = memodb._index(entries, b"p" * 20)
    n = len(entries)
    start = 8 + 256 * 4 + n * 20 + n * 4
    assert struct.unpack(">2I", idx[start:start + 8]) == (12, 0x80000000)
    assert struct.unpack(">Q", idx[start + 8:start + 16]) == (2**31 + 5,)
    assert struct.unpack(">I", idx[8 + 255 * 4:8 + 256 * 4]) == (2,)  # fan-out total


def test_memory_objects_become_one_valid_pack(tmp_path: Path) -> None:
    sha = make_repo(tmp_path / "repo")
    ws = GitWorkspace.create(tmp_path / "ws", str(tmp_path / "repo"), sha)
    loose_before = _loose(ws.path)
    repo = pygit2.Repository(str(ws.path))
    memory = memodb.attach(repo, ws.git_dir / "objects")
    rng = random.Random(7)
    # sizes around the header's 4- and 7-bit boundaries, empty, and one of several MiB
    blobs = [rng.randbytes(n) for n in (0, 1, 15, 16, 127, 128, 2047, 2048, 16383, 16384, 3 << 20)]
    builder = repo.TreeBuilder(repo.revparse_single(f"{sha}^{{tree}}").peel(pygit2.Tree))
    for i, data in enumerate(blobs):
        builder.insert(f"blob-{i}.bin", repo.create_blob(data), pygit2.enums.FileMode.BLOB)
    tree = builder.write()
    sig = pygit2.Signature("t", "t@t", 0, 0)
    commit = repo.create_commit(None, sig, sig, "m\n", tree, [pygit2.Oid(hex=sha)])
    assert len(memory.objects) == len(blobs) + 2 and _loose(ws.path) == loose_before  # nothing on disk yet

    assert memodb.write_pack(memory, ws.git_dir / "objects" / "pack") == len(blobs) + 2
    assert not memory.objects and _loose(ws.path) == loose_before
    run_git(ws.path, "update-ref", "refs/heads/packed", str(commit))
    _fsck(ws.path)  # checks the pack's checksums and every object's id
    for i, data in enumerate(blobs):
        out = run_git(ws.path, "cat-file", "-s", f"refs/heads/packed:blob-{i}.bin")
        assert int(out) == len(data)
    assert repo[commit].tree_id == tree  # the handle reads them back from the new pack


def _job(tmp_path: Path, steps: Any = STEPS) -> dict[str, Any]:
    return checkpointed_job(tmp_path, steps, job_id="job-m", summary="")


def _edit(root: Path) -> None:
    (root / "src" / "app.py").write_text("def main():\n    return 3\n")
    (root / "assets" / "logo.bin").write_bytes(BINARY[::-1] + b"\0more")
    (root / "new dir").mkdir(exist_ok=True)
    (root / "new dir" / "n\u00e9w.txt").write_text("new\n")


def _delete(root: Path) -> None:
    (root / "src" / "util.py").unlink()
    (root / "docs" / "spaced name.txt").write_text("spaces, edited\n")


def _replay_and_check(job: dict[str, Any], dest: Path) -> GitWorkspace:
    before = _scratch_dirs()
    rebuilt = replay(dest, repo=str(job["repo"]), baseline_sha=job["sha"], checkpoints=job["metas"],
                     arts=job["arts"])
    assert run_git(rebuilt.path, "rev-parse", "HEAD") == run_git(job["ws"].path, "rev-parse", "HEAD")
    assert workspace_matches(rebuilt.path, job["metas"], job["sha"])
    assert worktree_tree(rebuilt.path) == job["metas"][-1]["treeAfter"]
    assert _scratch_dirs() <= before  # the private index's directory is gone
    _fsck(rebuilt.path)
    return rebuilt


def test_in_process_replay_writes_one_pack_and_no_loose_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = _job(tmp_path, [("edit", _edit), ("delete", _delete), ("noop", lambda root: None)])
    cli: list[bytes] = []
    monkeypatch.setattr(PatchStack, "_apply_cli", lambda self, patch: cli.append(patch))
    rebuilt = _replay_and_check(job, tmp_path / "rebuilt")
    assert not cli  # every patch applied in-process
    assert _loose(rebuilt.path) <= _loose(job["repo"])  # only the clone's hard links
    assert len(list((rebuilt.git_dir / "objects" / "pack").glob("*.pack"))) == 1


def test_patches_libgit2_refuses_go_through_the_cli(tmp_path: Path) -> None:
    # STEPS has a mode-only change, which libgit2 does not apply: the CLI does, objects so far
    # having been written to the pack first
    _replay_and_check(_job(tmp_path), tmp_path / "rebuilt")


@pytest.mark.parametrize("failure", ["write_pack", "apply_cached", "no_pygit2"])
def test_replay_falls_back_to_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str) -> None:
    job = _job(tmp_path)
    calls: list[str] = []

    def broken(*args: Any, **kwargs: Any) -> Any:
        calls.append(failure)
        raise pygit2.GitError("simulated libgit2 failure")

    if failure == "write_pack":  # objects still in memory: the whole build starts again on the CLI
        monkeypatch.setattr(memodb, "write_pack", broken)
    elif failure == "apply_cached":  # one patch at a time: `git apply --cached`
        monkeypatch.setattr(libgit.InProcess, "apply_cached", broken)
    else:
        monkeypatch.setattr(libgit, "AVAILABLE", False)
    _replay_and_check(job, tmp_path / "rebuilt")
    assert calls or failure == "no_pygit2"


def test_memory_over_its_limit_is_written_pack_by_pack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from celery_selfheal.workspace import patch_stack

    monkeypatch.setattr(patch_stack, "_MEMORY_LIMIT", 0)  # every patch: a pack of its own
    job = _job(tmp_path, [("edit", _edit), ("delete", _delete), ("noop", lambda root: None)])
    rebuilt = _replay_and_check(job, tmp_path / "rebuilt")
    assert len(list((rebuilt.git_dir / "objects" / "pack").glob("*.pack"))) == 3  # 2 patches + commits
