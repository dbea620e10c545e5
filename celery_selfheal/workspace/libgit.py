"""In-process git (libgit2 through pygit2) for the per-step hot path of `workspace.git`.

Each step used to start about nine git processes (rev-parse, add, write-tree twice, commit-tree,
update-ref, status) to learn what the runtime changed and to commit it; measured on a 2-core
machine this was the largest part of a no-op step's overhead (bench/profile_step.py). The same work
in-process takes a few milliseconds (bench/bench_git_inproc.py). Only these operations live here:
staging the work tree into an in-memory index and writing its tree, the checkpoint commit and its
ref update, the clean check, resolving the base, and replay's patch application (checked against
the checkpoint's tree, see `workspace.patch_stack`), and the clone of a local baseline
(`clone_local`: a CLI clone and checkout are four processes, most of a first step's cost and of a
replay on another worker), and the checkout of a replayed workspace (`InProcess.checkout_empty`: a
``git checkout`` process was a third of a small replay's CPU; for the replay bench's 320 files the
two take the same time). Diffs (the checkpoint's patch bytes) and clones of URLs stay on the git CLI.

Same results as the CLI, or the CLI is used: the trees are those of ``git add --all`` +
``write-tree`` (tests/workspace/test_libgit.py compares the two on generated work trees), commits
are byte-identical to ``git commit-tree`` with the fixed identity, and every libgit2 error (a
nested repository libgit2 cannot stage, a damaged index) makes the caller fall back to the CLI.
Like the CLI's isolated mode, libgit2 here reads no global, XDG or system configuration; a
workspace whose own configuration sets something the CLI overrides (``core.autocrlf``) uses the CLI.
Without pygit2 everything uses the CLI.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

try:  # an optional fast path: the CLI does the same work when pygit2 is missing
    import pygit2

    AVAILABLE = True
except ImportError:  # pragma: no cover - pygit2 is a declared dependency
    AVAILABLE = False

if AVAILABLE:
    # The isolated CLI runs with GIT_CONFIG_NOSYSTEM and GIT_CONFIG_GLOBAL=/dev/null: do the same.
    for _level in ("GIT_CONFIG_LEVEL_SYSTEM", "GIT_CONFIG_LEVEL_XDG", "GIT_CONFIG_LEVEL_GLOBAL",
                   "GIT_CONFIG_LEVEL_PROGRAMDATA"):
        if hasattr(pygit2, _level):
            pygit2.settings.search_path[getattr(pygit2, _level)] = ""
    Error: tuple[type[BaseException], ...] = (pygit2.GitError, pygit2.InvalidSpecError, KeyError, ValueError,
                                              OSError)
else:  # pragma: no cover
    Error = (OSError,)

#: workspace config keys the CLI overrides with ``-c``; if the workspace sets one, use the CLI
_OVERRIDDEN = ("core.autocrlf",)


class InProcess:
    """One workspace opened with libgit2; every method raises one of `Error` on trouble."""

    def __init__(self, repo: Any, base_ref: str) -> None:
        self.repo = repo
        self.base_ref = base_ref
        self._index_tree: str | None = None  # the tree `apply_cached` left in the index
        self._disk_tree: str | None = None  # the tree of the index on disk when `snapshot` read it

    def _commit_of(self, name: str) -> Any:
        return self.repo.revparse_single(name).peel(pygit2.Commit)

    def base_and_tree(self) -> tuple[str, str]:
        """The base commit (the base ref, else HEAD) and its tree."""
        try:
            commit = self._commit_of(self.base_ref)
        except (KeyError, pygit2.GitError, pygit2.InvalidSpecError):
            commit = self._commit_of("HEAD")
        return str(commit.id), str(commit.tree_id)

    def rev(self, spec: str) -> str:
        """The object id ``spec`` resolves to (``git rev-parse --verify``)."""
        return str(self.repo.revparse_single(spec).id)

    def head_tree(self) -> str:
        """Tree sha of HEAD."""
        return str(self._commit_of("HEAD").tree_id)

    def has_commit(self, sha: str) -> bool:
        """True if ``sha`` names a commit of the repository."""
        try:
            self._commit_of(sha)
            return True
        except (KeyError, ValueError, pygit2.GitError, pygit2.InvalidSpecError):
            return False

    def snapshot(self) -> tuple[str, Any]:
        """Stage the whole work tree (``git add --all``) into the index, in memory only: returns the
        tree sha and the index (written to disk only by `commit`)."""
        index = self.repo.index
        index.read(force=True)  # start from the real index on disk, with its stat cache
        try:  # the tree the index on disk holds (its cached trees: no object written when valid)
            self._disk_tree = str(index.write_tree())
        except Error:
            self._disk_tree = None  # e.g. conflict entries: `commit` writes the index
        index.add_all()
        return str(index.write_tree()), index

    def commit(self, tree: str, parent: str, message: str, index: Any, identity: dict[str, str]) -> str:
        """``git commit-tree tree -p parent`` with the fixed identity, then HEAD (detached) and the
        base ref moved there in one ref transaction, then ``index`` made the real index."""
        oid = self.commit_tree(tree, parent, message, identity)
        self.set_refs(oid)
        if tree != self._disk_tree:  # the index on disk already holds this tree (a no-op step): keep it
            index.write()  # atomic (lock file + rename), like the CLI's replace of the index
        return oid

    def commit_tree(self, tree: str, parent: str, message: str, identity: dict[str, str]) -> str:
        """``git commit-tree tree -p parent`` with the fixed identity (no ref moves)."""
        author = _signature(identity, "AUTHOR")
        committer = _signature(identity, "COMMITTER")
        return str(self.repo.create_commit(None, author, committer, message, pygit2.Oid(hex=tree),
                                           [pygit2.Oid(hex=parent)]))

    def set_refs(self, commit: str, *, head: bool = True) -> None:
        """Point the base ref (and a detached HEAD) at ``commit`` in one ref transaction."""
        oid = pygit2.Oid(hex=commit)
        with self.repo.transaction() as txn:
            refs = (self.base_ref, "HEAD") if head else (self.base_ref,)
            for ref in refs:
                txn.lock_ref(ref)
                txn.set_target(ref, oid, message="selfheal checkpoint")

    def checkout_empty(self, commit: str) -> None:
        """Write the index and work tree of ``commit`` into a workspace that has neither yet (as
        `clone_local` does for a first step); the caller moves HEAD and the base."""
        tree = self._commit_of(commit).tree
        self.repo.checkout_tree(tree, strategy=pygit2.enums.CheckoutStrategy.FORCE)

    def apply_cached(self, tree: str, patch: bytes) -> str:
        """``git apply --cached`` of ``patch`` onto ``tree`` in the workspace's own index (replay's
        private build, whose work tree is never touched); returns the resulting tree."""
        index = self.repo.index
        if self._index_tree != tree:
            index.read_tree(pygit2.Oid(hex=tree))
            index.write()
        self._index_tree = None  # unknown until the apply below succeeded
        self.repo.apply(pygit2.Diff.parse_diff(patch), pygit2.enums.ApplyLocation.INDEX)
        index.read(force=True)
        self._index_tree = str(index.write_tree())
        return self._index_tree

    def is_clean(self) -> bool:
        """``git status --porcelain --untracked-files=all`` is empty: no staged, unstaged or
        untracked (non-ignored) change."""
        return not self.repo.status(untracked_files="all", ignored=False)


def _signature(identity: dict[str, str], who: str) -> Any:
    seconds, _, offset = identity[f"GIT_{who}_DATE"].partition(" ")
    sign = -1 if offset.startswith("-") else 1
    minutes = sign * (int(offset[1:3]) * 60 + int(offset[3:5])) if offset else 0
    return pygit2.Signature(identity[f"GIT_{who}_NAME"], identity[f"GIT_{who}_EMAIL"], int(seconds), minutes)


def open_workspace(path: Path, base_ref: str) -> InProcess | None:
    """The workspace at ``path`` opened in-process, or None: use the CLI (no pygit2, not a work
    tree libgit2 can open, or a config key the CLI overrides)."""
    if not AVAILABLE or not (Path(path) / ".git").is_dir():
        return None
    try:
        repo = pygit2.Repository(str(path), pygit2.enums.RepositoryOpenFlag.NO_SEARCH)
        config = repo.config
        # the CLI runs with core.autocrlf=false: any other value changes what gets staged
        if any(key in config and str(config[key]).lower() not in ("false", "0", "no", "off")
               for key in _OVERRIDDEN):
            return None
    except Error:
        return None
    return InProcess(repo, base_ref)


def clone_local(source: str, path: Path, sha: str, *, checkout: bool, config: Mapping[str, str]) -> bool:
    """``git clone --no-checkout --template=`` of the local repository ``source`` into the empty
    directory ``path``, detached at ``sha`` with ``config`` set, and with ``checkout`` its index and
    work tree written; in-process. libgit2 hard-links the objects as git's local clone does and makes
    the same refs (``refs/heads/*``, ``refs/remotes/origin/*``) and ``origin`` remote. Cloned bare
    into ``path/.git`` and then made a work tree, so that ``checkout=False`` writes no file. False when
    libgit2 cannot do it (no pygit2, a repository it cannot open, ``sha`` missing); the caller then
    removes ``path/.git`` and uses the CLI, which also words any error."""
    if not AVAILABLE:
        return False
    git_dir = path / ".git"
    try:
        pygit2.clone_repository(source, str(git_dir), bare=True).free()
        _configure(git_dir / "config", {"core.logallrefupdates": "true", **config})
        repo = pygit2.Repository(str(path), pygit2.enums.RepositoryOpenFlag.NO_SEARCH)
        commit = repo.revparse_single(sha).peel(pygit2.Commit)
        if checkout:
            repo.checkout_tree(commit.tree, strategy=pygit2.enums.CheckoutStrategy.FORCE)
        repo.set_head(commit.id)  # detached, as ``git checkout --detach``
    except Error:
        return False
    except TypeError:  # a path or sha text libgit2 refuses to take
        return False
    # libgit2's built-in template; the CLI's empty one (--template=) leaves none of these
    with contextlib.suppress(OSError):
        os.unlink(git_dir / "hooks" / "README.sample")
        os.rmdir(git_dir / "hooks")
    with contextlib.suppress(OSError):
        os.unlink(git_dir / "description")
    return True


#: values written into a fresh clone's config as they are (no quoting or escaping needed)
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9@._/+-]+")


def _configure(path: Path, settings: Mapping[str, str]) -> None:
    """Make the bare clone's config (as libgit2 wrote it) a work tree's with ``settings`` added, in
    one write: each libgit2 config set rewrites the file (~0.25 ms apiece, ten per clone). A section
    may appear twice in a git config file, so the settings go in a block per section at the end;
    a value that would need quoting goes through libgit2's config instead."""
    text = path.read_text("utf-8")
    if "\tbare = true\n" not in text:
        raise pygit2.GitError(f"unexpected config written by libgit2 in {path}")
    text = text.replace("\tbare = true\n", "\tbare = false\n", 1)
    plain = {k: v for k, v in settings.items() if _PLAIN_VALUE.fullmatch(v) and k.count(".") == 1}
    sections: dict[str, list[str]] = {}
    for key, value in plain.items():
        section, name = key.split(".")
        sections.setdefault(section, []).append(f"\t{name} = {value}\n")
    text += "".join(f"[{section}]\n" + "".join(lines) for section, lines in sections.items())
    path.write_text(text, "utf-8")
    rest = {k: v for k, v in settings.items() if k not in plain}
    if rest:
        config = pygit2.Config(str(path))
        for key, value in rest.items():
            config[key] = value


def resolve_local(root: Path, ref: str) -> str | None:
    """The commit sha ``ref`` names in the local repository at exactly ``root`` (a work tree's top
    or a bare repository), or None: let the CLI answer (and word any error). Used at submission,
    where two ``git rev-parse`` processes per job were most of the submit time."""
    if not AVAILABLE:
        return None
    try:
        repo = pygit2.Repository(str(root), pygit2.enums.RepositoryOpenFlag.NO_SEARCH)
        return str(repo.revparse_single(ref).peel(pygit2.Commit).id)
    except Error:
        return None
    except TypeError:  # e.g. a ref text libgit2 refuses to take
        return None
