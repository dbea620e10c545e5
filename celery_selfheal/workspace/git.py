"""Git workspaces: a clone of the job's baseline repository, detached at the baseline commit.

Git runs only through this package (`workspace.gitcmd` for the CLI and its fixed configuration,
`workspace.libgit` in-process, `workspace.resolve` for submission's ``resolve_ref``); the names
other modules import from here (``git``, ``resolve_ref``, ``IDENTITY``, ...) are re-exported.

The workspace remembers its *base*, the commit of the last checkpoint (``refs/selfheal/base``). A
step's change is the working state against that base, so a runtime that commits on its own (aider
does by default) still yields its whole change; ``commit_change`` commits on top of the base and
detaches HEAD there again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from celery_selfheal.errors import WorkspaceError
from celery_selfheal.workspace import clone, libgit
from celery_selfheal.workspace.gitcmd import (
    APPLY_ARGS,
    BASE_REF,
    DIFF_ARGS,
    IDENTITY,
    git,
)
from celery_selfheal.workspace.resolve import resolve_ref

__all__ = ["APPLY_ARGS", "BASE_REF", "IDENTITY", "Change", "GitWorkspace", "git", "resolve_ref"]


@dataclass(frozen=True)
class Change:
    """A workspace's change against its base: exact binary patch bytes and the resulting tree."""

    #: sha256 (hex) of ``patch``; the sha256 of b"" for no change
    diff_hash: str
    #: every path the change touches (both names of a rename), sorted
    changed_files: tuple[str, ...]
    #: ``git diff --binary --full-index -M`` output, appliable with plain ``git apply``
    patch: bytes
    #: tree sha of the working state
    tree: str
    #: tree sha the patch applies to (the base's tree)
    base_tree: str = ""
    #: the base commit (what `GitWorkspace.commit_change` commits on)
    base: str = ""


class GitWorkspace:
    """A git work tree owned by celery-selfheal."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path).absolute()  # GIT_DIR below must not depend on the cwd
        self.git_dir = self.path / ".git"
        self._inproc: libgit.InProcess | None = None
        self._inproc_stamp: tuple[int, int, int] | None = None

    @classmethod
    def create(cls, path: Path, repo: str, sha: str, *, checkout: bool = True) -> GitWorkspace:
        """Clone ``repo`` into ``path`` (absent or empty), detached at ``sha``.

        A local repository is cloned with hard-linked objects (git falls back to copying across
        file systems). ``checkout=False`` leaves the work tree and index empty (used by replay).
        """
        return clone.create(cls(Path(path)), repo, sha, checkout=checkout)

    @classmethod
    def open(cls, path: Path) -> GitWorkspace:
        """An existing workspace at ``path``; WorkspaceError if it is not one of our git work trees."""
        ws = cls(Path(path))
        ws.verify()
        ws.rev("HEAD^{commit}")
        return ws

    def verify(self) -> None:
        """WorkspaceError unless ``.git`` is still the repository we cloned: a real directory with
        HEAD, objects and our base ref. A runtime may empty, remove or replace it (``git init``);
        git is pinned to it (`git`), so it never finds an enclosing repository instead, and this
        check says so in one line before any snapshot or commit."""
        d = self.git_dir
        ok = d.is_dir() and not d.is_symlink() and (d / "HEAD").is_file() and (d / "objects").is_dir()
        if ok and not (d / BASE_REF).is_file():
            packed = d / "packed-refs"
            ok = packed.is_file() and f" {BASE_REF}\n".encode() in packed.read_bytes()
        if not ok:
            raise WorkspaceError(f"{self.path} is not a git workspace any more: its repository {d} is "
                                 "missing or was replaced (removed, emptied or re-initialised)")

    def git(self, args: Sequence[str], *, input: bytes | None = None, env: Mapping[str, str] | None = None,
            isolated: bool = True, timeout: float | None = None) -> bytes:
        """Run git in this workspace (isolated configuration unless ``isolated=False``).

        Git's directory and work tree are pinned (``GIT_DIR``, ``GIT_WORK_TREE``, and a ceiling at
        the workspace's parent): a damaged workspace is an error, never resolved by discovery to
        the repository that encloses the state dir (the user's own project)."""
        pinned = {"GIT_DIR": str(self.git_dir), "GIT_WORK_TREE": str(self.path),
                  "GIT_CEILING_DIRECTORIES": str(self.path.parent), **(env or {})}
        return git(args, cwd=self.path, input=input, env=pinned, isolated=isolated, timeout=timeout)

    def _fast(self) -> libgit.InProcess | None:
        """This workspace opened in-process (`workspace.libgit`), or None to use the CLI.

        Opened once per instance (a step used to open it about six times, 0.3 ms each): libgit2
        reads refs, the index and new objects from disk on every call; only the configuration is
        read at open, so the workspace is opened again when its config file changed (a runtime
        that sets ``core.autocrlf`` gets the CLI, as before)."""
        stamp = self._config_stamp()
        if self._inproc is None or stamp != self._inproc_stamp:
            self._inproc = libgit.open_workspace(self.path, BASE_REF)  # None is not kept: no .git yet
            self._inproc_stamp = stamp
        return self._inproc

    def opens_in_process(self) -> bool:
        """True if libgit2 opens this workspace as the CLI sees it (the instance `_fast` keeps)."""
        return self._fast() is not None

    def _config_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.git_dir / "config")
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def has_commit(self, sha: str) -> bool:
        """True if ``sha`` names a commit of this workspace's repository."""
        fast = self._fast()
        if fast is not None and fast.has_commit(sha):
            return True
        try:
            self.git(["cat-file", "-e", f"{sha}^{{commit}}"])
            return True
        except WorkspaceError:
            return False

    def rev(self, spec: str) -> str:
        """The object id ``spec`` resolves to (e.g. ``sha^{tree}``)."""
        fast = self._fast()
        if fast is not None:
            try:
                return fast.rev(spec)
            except libgit.Error:
                pass  # the CLI gives the error message
        return self.git(["rev-parse", "--verify", "--quiet", spec]).decode().strip()

    def head_tree(self) -> str:
        """Tree sha of HEAD."""
        fast = self._fast()
        if fast is not None:
            try:
                return fast.head_tree()
            except libgit.Error:
                pass
        return self.rev("HEAD^{tree}")

    def _base(self) -> str:
        try:
            return self.rev(f"{BASE_REF}^{{commit}}")
        except WorkspaceError:
            return self.rev("HEAD^{commit}")

    def _base_and_tree(self) -> tuple[str, str]:
        """The base commit and its tree, in one git call when the base ref exists."""
        fast = self._fast()
        if fast is not None:
            try:
                return fast.base_and_tree()
            except libgit.Error:
                pass
        try:
            out = self.git(["rev-parse", f"{BASE_REF}^{{commit}}", f"{BASE_REF}^{{tree}}"])
        except WorkspaceError:
            base = self.rev("HEAD^{commit}")
            return base, self.rev(f"{base}^{{tree}}")
        base, tree = out.decode().split()
        return base, tree

    def base_tree(self) -> str:
        """Tree sha of the base (the last checkpoint commit; HEAD unless the runtime committed)."""
        return self._base_and_tree()[1]

    def _snapshot(self, base: str) -> tuple[str, Path]:
        """Stage the whole work tree into a private copy of the index; return (tree, index path)."""
        self.verify()
        fd, name = tempfile.mkstemp(dir=self.git_dir, prefix="selfheal-index-")
        os.close(fd)
        index = Path(name)
        env = {"GIT_INDEX_FILE": str(index)}
        try:
            real = self.git_dir / "index"
            if real.exists():
                # A copy keeps the stat cache (only changed files are hashed again). copy2 keeps the
                # index's mtime too: git's racy-clean check compares file mtimes against it, and a
                # fresh mtime would hide a same-size edit made in the second of the last checkout.
                shutil.copy2(real, index)
            else:
                index.unlink()
                self.git(["read-tree", base], env=env)
            self.git(["add", "--all"], env=env)
            return self.git(["write-tree"], env=env).decode().strip(), index
        except BaseException:
            index.unlink(missing_ok=True)
            raise

    def _fast_snapshot(self) -> str | None:
        """The work tree's tree sha staged in-process (nothing written), or None to use the CLI."""
        fast = self._fast()
        if fast is None:
            return None
        try:
            return fast.snapshot()[0]
        except libgit.Error:
            return None

    def diff(self, old_tree: str, new_tree: str) -> tuple[bytes, tuple[str, ...]]:
        """The binary patch from ``old_tree`` to ``new_tree`` and the paths it touches."""
        patch = self.git(["diff-tree", "-p", *DIFF_ARGS, old_tree, new_tree])
        tokens = self.git(["diff-tree", "--name-status", "-z", *DIFF_ARGS, old_tree, new_tree]).split(b"\0")
        names: set[str] = set()
        i = 0
        while i < len(tokens) and tokens[i]:  # -z: status, path (a second one for renames/copies)
            count = 2 if tokens[i][:1] in (b"R", b"C") else 1
            # backslashreplace: a name that is not UTF-8 stays printable and JSON-encodable
            names.update(t.decode("utf-8", "backslashreplace") for t in tokens[i + 1:i + 1 + count])
            i += 1 + count
        return patch, tuple(sorted(names))

    def current_change(self) -> Change:
        """The full change of the work tree against the base (untracked files included, ignored ones
        not), computed on a private index copy: the real index is left untouched."""
        self.verify()  # in-process or not: never snapshot a repository that replaced ours
        base, base_tree = self._base_and_tree()
        tree = self._fast_snapshot()
        if tree is None:
            tree, index = self._snapshot(base)
            index.unlink(missing_ok=True)
        patch, files = self.diff(base_tree, tree) if tree != base_tree else (b"", ())
        return Change(hashlib.sha256(patch).hexdigest(), files, patch, tree, base_tree, base)

    def commit_tree(self, tree: str, parent: str, message: str) -> str:
        """Create a commit of ``tree`` on ``parent`` with the fixed identity and dates; return its sha."""
        out = self.git(["commit-tree", tree, "-p", parent], input=message.encode("utf-8"), env=IDENTITY)
        return out.decode().strip()

    def move_head(self, commit: str) -> None:
        """Detach HEAD at ``commit`` and make it the base, in one ref transaction."""
        fast = self._fast()
        if fast is not None:
            try:
                fast.set_refs(commit)
                return
            except libgit.Error:
                pass
        self.git(["update-ref", "--no-deref", "--stdin"],
                 input=f"update HEAD {commit}\nupdate {BASE_REF} {commit}\n".encode())

    def commit_change(self, message: str, *, base: str = "") -> str:
        """Commit the whole working state (even when unchanged) on the base; return its tree sha.
        ``base`` saves looking it up when the caller just measured it (`Change.base`)."""
        self.verify()  # in-process or not: never commit into a repository that replaced ours
        base = base or self._base()
        fast = self._fast()
        if fast is not None:
            try:
                tree, staged = fast.snapshot()
                fast.commit(tree, base, message, staged, IDENTITY)
                return tree
            except libgit.Error:
                pass  # e.g. a nested repository libgit2 cannot stage: the CLI records it as a gitlink
        tree, index = self._snapshot(base)
        try:
            self.move_head(self.commit_tree(tree, base, message))
            os.replace(index, self.git_dir / "index")  # the staged snapshot becomes the real index
        finally:
            index.unlink(missing_ok=True)
        return tree

    def is_clean_at(self, tree: str) -> bool:
        """True if HEAD's tree is ``tree`` and neither index nor work tree differ from HEAD."""
        fast = self._fast()
        if fast is not None:
            try:
                return fast.head_tree() == tree and fast.is_clean()
            except libgit.Error:
                pass
        try:
            if self.head_tree() != tree:
                return False
            status = self.git(["status", "--porcelain", "-z", "--untracked-files=all"])
        except WorkspaceError:
            return False
        return status == b""

    def apply_patch(self, patch: bytes) -> None:
        """Apply a binary git patch to index and work tree (an empty patch is a no-op)."""
        if patch:
            self.git(["apply", "--index", *APPLY_ARGS], input=patch)

    def checkout(self, commit: str, *, fresh: bool = False) -> None:
        """Make index and work tree exactly ``commit`` and detach HEAD (and the base) there.

        ``fresh``: the index and work tree are still empty (a clone without checkout, as replay
        builds), so libgit2 writes them in-process, as a first step's clone does; the CLI otherwise,
        or when libgit2 fails."""
        fast = self._fast() if fresh else None
        if fast is not None:
            try:
                fast.checkout_empty(commit)
                self.move_head(commit)
                return
            except libgit.Error:
                pass  # the CLI's --force below overwrites whatever libgit2 wrote
        self.git(["checkout", "--quiet", "--force", "--detach", commit])
        self.move_head(commit)

