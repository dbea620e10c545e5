"""Fast verified replay: patches applied one after another without a work tree, commits written in
one ``git fast-import``, the work tree checked out once (used by `checkpoints.replay`). Runs git
only through `GitWorkspace.git` and `workspace.libgit`.

Each patch is applied in-process (libgit2) to the previous tree; when libgit2 cannot apply it, or
its tree is not the one the checkpoint recorded, the same patch goes through ``git apply
--cached`` on a private index instead, so the CLI stays the judge of what a patch means."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from celery_selfheal.workspace import libgit
from celery_selfheal.workspace.git import APPLY_ARGS, BASE_REF, IDENTITY, GitWorkspace


class PatchStack:
    """Applies patches one after another to a private index, without touching the work tree, and
    records the tree after each; ``finish`` writes all commits in one ``git fast-import`` and checks
    the last one out once. Commit ids equal those of ``commit_tree`` with the same messages."""

    def __init__(self, ws: GitWorkspace, start: str) -> None:
        self.ws = ws
        self.start = ws.rev(f"{start}^{{commit}}")
        self.commits: list[tuple[str, str]] = []
        fd, name = tempfile.mkstemp(dir=ws.git_dir, prefix="selfheal-replay-index-")
        os.close(fd)
        self.index = Path(name)
        self.index.unlink()
        self.env = {"GIT_INDEX_FILE": str(self.index)}
        self.fast = libgit.open_workspace(ws.path, BASE_REF)
        self.tree = ws.rev(f"{self.start}^{{tree}}")
        self._index_at: str | None = None  # the tree the private index holds (None: not read yet)

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
            return self.fast.apply_cached(self.tree, patch)
        except libgit.Error:
            return None

    def _apply_cli(self, patch: bytes) -> str:
        if self._index_at != self.tree:
            self.ws.git(["read-tree", self.tree], env=self.env)
        if patch:
            self.ws.git(["apply", "--cached", *APPLY_ARGS], input=patch, env=self.env)
        tree = self.ws.git(["write-tree"], env=self.env).decode().strip()
        self._index_at = tree
        return tree

    def finish(self) -> None:
        """Create the queued commits (one process for all) and check the last one out."""
        if not self.commits:
            self.ws.checkout(self.start)
            return
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
        self.ws.checkout(self.ws.rev(f"{BASE_REF}^{{commit}}"))

    def close(self) -> None:
        """Remove the private index."""
        self.index.unlink(missing_ok=True)
