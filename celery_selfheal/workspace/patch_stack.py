"""Fast verified replay: patches applied one after another without a work tree, the commits
written after the last one, the work tree checked out once (used by `checkpoints.replay`). Runs git
only through `GitWorkspace.git` and `workspace.libgit`.

In-process (the default), each patch is applied with libgit2 to the previous tree and every new
blob, tree and commit stays in memory (`workspace.memodb`) until `finish` writes them all as one
pack: loose-object writes were most of a replay's time. When libgit2 cannot apply a patch, or its
tree is not the one the checkpoint recorded, the objects so far are written out and the same patch
goes through ``git apply --cached`` on a private index instead, so the CLI stays the judge of what a
patch means. Any other libgit2 error propagates (one of `libgit.Error`): the caller starts again
with ``in_process=False``, where the commits are written by one ``git fast-import``."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from celery_selfheal.workspace import libgit
from celery_selfheal.workspace.git import APPLY_ARGS, BASE_REF, IDENTITY, GitWorkspace

if TYPE_CHECKING:
    from celery_selfheal.workspace import memodb

#: bytes of new objects replay keeps in memory before it writes them to a pack
_MEMORY_LIMIT = 64 << 20


class PatchStack:
    """Applies patches one after another without touching the work tree and records the tree after
    each; ``finish`` writes all commits and checks the last one out once. Commit ids equal those of
    ``commit_tree`` with the same messages."""

    def __init__(self, ws: GitWorkspace, start: str, *, in_process: bool = True) -> None:
        self.ws = ws
        self.start = ws.rev(f"{start}^{{commit}}")
        self.commits: list[tuple[str, str]] = []
        fd, name = tempfile.mkstemp(dir=ws.git_dir, prefix="selfheal-replay-index-")
        os.close(fd)
        self.index = Path(name)
        self.index.unlink()
        self.env = {"GIT_INDEX_FILE": str(self.index)}
        self.tree = ws.rev(f"{self.start}^{{tree}}")
        self._index_at: str | None = None  # the tree the private index holds (None: not read yet)
        self.fast: libgit.InProcess | None = None
        self.memory: memodb.MemoryObjects | None = None
        self.scratch: Path | None = None
        # Only for a workspace libgit2 opens as the CLI sees it (not, e.g., one of an object format
        # it does not read): the scratch repository reads the workspace's objects.
        if in_process and ws.opens_in_process():  # opened once for `rev` above, not again
            from celery_selfheal.workspace import memodb  # needs pygit2

            repo, self.memory, self.scratch = memodb.scratch_repository(ws.git_dir / "objects")
            self.fast = libgit.InProcess(repo, BASE_REF)

    def push(self, patch: bytes, message: str, expected: str | None = None) -> str:
        """Apply ``patch`` (may be empty), queue a commit of the result, return its tree sha.
        ``expected``: the tree the checkpoint recorded; a different in-process result is redone by
        the CLI (whose result is returned, whatever it is)."""
        tree = self._apply_fast(patch) if patch else self.tree
        if tree is None or (expected is not None and tree != expected):
            tree = self._apply_cli(patch)
        self.tree = tree
        self.commits.append((tree, message))
        return tree

    def _apply_fast(self, patch: bytes) -> str | None:
        if self.fast is None:
            return None
        try:
            tree = self.fast.apply_cached(self.tree, patch)
        except libgit.Error:
            return None
        if self.memory is not None and self.memory.size > _MEMORY_LIMIT:
            self._write_objects()  # big patches: several packs rather than unbounded memory
        return tree

    def _apply_cli(self, patch: bytes) -> str:
        self._write_objects()  # the CLI reads the trees so far from disk
        if self._index_at != self.tree:
            self.ws.git(["read-tree", self.tree], env=self.env)
        if patch:
            self.ws.git(["apply", "--cached", *APPLY_ARGS], input=patch, env=self.env)
        tree = self.ws.git(["write-tree"], env=self.env).decode().strip()
        self._index_at = tree
        return tree

    def _write_objects(self) -> None:
        if self.memory is not None:
            from celery_selfheal.workspace import memodb

            memodb.write_pack(self.memory, self.ws.git_dir / "objects" / "pack")

    def finish(self) -> None:
        """Create the queued commits and check the last one out."""
        in_process = self.fast is not None  # a rebuild with the CLI alone keeps to the CLI
        if not self.commits:
            self.ws.checkout(self.start, fresh=in_process)
            return
        head = self._commit_in_process() if in_process else self._fast_import()
        self.ws.checkout(head, fresh=in_process)

    def _commit_in_process(self) -> str:
        assert self.fast is not None
        head = self.start
        for tree, message in self.commits:
            head = self.fast.commit_tree(tree, head, message, IDENTITY)
        self._write_objects()
        return head

    def _fast_import(self) -> str:
        who = f"{IDENTITY['GIT_AUTHOR_NAME']} <{IDENTITY['GIT_AUTHOR_EMAIL']}> {IDENTITY['GIT_AUTHOR_DATE']}"
        stream = bytearray()
        for mark, (tree, message) in enumerate(self.commits, start=1):
            data = message.encode("utf-8")
            parent = self.start if mark == 1 else f":{mark - 1}"
            stream += (f"commit {BASE_REF}\nmark :{mark}\nauthor {who}\ncommitter {who}\n"
                       f"data {len(data)}\n").encode() + data
            stream += f"\nfrom {parent}\nM 040000 {tree} \"\"\n\n".encode()
        stream += b"done\n"
        self.ws.git(["fast-import", "--quiet", "--force", "--done"], input=bytes(stream))
        return self.ws.rev(f"{BASE_REF}^{{commit}}")

    def close(self) -> None:
        """Remove the private index (and repository)."""
        self.index.unlink(missing_ok=True)
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
