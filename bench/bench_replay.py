"""Replay time for 10, 50, 100 and 200 checkpoints of realistic patches (REQ-05, issue 3).

Builds a baseline repository (300 text files, 20 binary files), makes 200 checkpoints with the real
``write_checkpoint`` (each step edits several text files, and now and then adds, deletes, renames,
chmods or rewrites a binary file), then times ``replay`` of the first N checkpoints into a fresh
path: median and worst of several runs, and the git processes one replay starts. For comparison it
also times the naive way (per step ``git apply --index`` on the work tree and a commit). Goals: 100
checkpoints in under 2 s (issue 3), then in at most 0.5 s (issue 16).

Then a step that comes back to a worker holding the job's workspace from K steps ago (a 10-step
job): that workspace brought forward by `catch_up` against a full replay, with the repository as a
local path and as a ``file://`` URL (cloned the way a server's repository is, without the network).

    /tmp/venv/bin/python bench/bench_replay.py [--runs 3] [--sizes 10,50,100,200]
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from celery_selfheal.artifacts import JobArtifacts
from celery_selfheal.workspace.catch_up import MAX_BEHIND, catch_up
from celery_selfheal.workspace.checkpoints import (
    checkpoint_message,
    replay,
    verify_checkpoint,
    write_checkpoint,
)
from celery_selfheal.workspace.git import GitWorkspace

WORDS = ["alpha", "beta", "gamma", "delta", "retry", "worker", "queue", "chain", "broker", "timeout"]


def _text(rng: random.Random, lines: int) -> str:
    return "".join(f"{' '.join(rng.choices(WORDS, k=8))} {rng.randrange(10**6)}\n" for _ in range(lines))


def make_baseline(root: Path, rng: random.Random) -> tuple[Path, str]:
    repo = root / "baseline"
    for i in range(300):
        path = repo / f"pkg{i % 12}" / f"module_{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_text(rng, rng.randrange(40, 120)))
    for i in range(20):
        (repo / "assets").mkdir(exist_ok=True)
        (repo / "assets" / f"blob_{i}.bin").write_bytes(rng.randbytes(rng.randrange(2_000, 20_000)))
    (repo / ".gitignore").write_text("build/\n")
    env = {"GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}
    for args in (["init", "-q", "-b", "main"], ["add", "-A"],
                 ["-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q", "-m", "baseline"]):
        subprocess.run(["git", *args], cwd=repo, check=True, env=env)
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True, env=env)
    return repo, sha.stdout.decode().strip()


def edit_step(ws: Path, rng: random.Random, step: int) -> None:
    """A realistic agent step: several edited files, sometimes a new/deleted/renamed/binary file."""
    files = sorted(p for p in ws.rglob("*.py") if ".git" not in p.parts)
    for path in rng.sample(files, k=min(len(files), rng.randrange(3, 7))):
        lines = path.read_text().splitlines(keepends=True)
        for _ in range(rng.randrange(1, 6)):
            lines[rng.randrange(len(lines))] = _text(rng, 1)
        lines.insert(rng.randrange(len(lines)), _text(rng, rng.randrange(1, 10)))
        path.write_text("".join(lines))
    if step % 2 == 0:
        new = ws / "pkg_new" / f"added_{step}.py"
        new.parent.mkdir(exist_ok=True)
        new.write_text(_text(rng, 30))
    if step % 5 == 1:
        rng.choice(files).unlink()
    if step % 7 == 3:
        victim = rng.choice([f for f in files if f.exists()])
        victim.rename(victim.with_name(f"renamed_{step}.py"))
    if step % 3 == 0:
        blob = ws / "assets" / f"blob_{rng.randrange(20)}.bin"
        if blob.exists():
            data = bytearray(blob.read_bytes())
            data[rng.randrange(len(data))] ^= 0xFF
            blob.write_bytes(bytes(data) + rng.randbytes(100))
    if step % 11 == 5:
        rng.choice([f for f in files if f.exists()]).chmod(0o755)
    (ws / "build").mkdir(exist_ok=True)
    (ws / "build" / f"out_{step}.o").write_bytes(b"ignored")


def naive_replay(dest: Path, repo: str, sha: str, metas: list[dict], arts: JobArtifacts) -> None:
    ws = GitWorkspace.create(dest, repo, sha)
    for meta in metas:
        ws.apply_patch(verify_checkpoint(arts, meta))
        ws.commit_change(checkpoint_message(meta))
    assert ws.head_tree() == metas[-1]["treeAfter"]


class _CountGit:
    """Counts the git processes started while active (replay runs git only through subprocess.run)."""

    def __init__(self) -> None:
        self.count = 0
        self._run = subprocess.run

    def __enter__(self) -> _CountGit:
        def run(args: Any, *rest: Any, **kwargs: Any) -> Any:
            self.count += isinstance(args, list) and bool(args) and args[0] == "git"
            return self._run(args, *rest, **kwargs)
        subprocess.run = run  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run = self._run  # type: ignore[assignment]


def catch_up_figures(root: Path, repo: Path, sha: str, metas: list[dict], arts: JobArtifacts, runs: int) -> None:
    """Median time to have the workspace of step 10 on a worker whose copy is K checkpoints behind."""
    n = 10
    print(f"{'behind':>6} {'repository':>10} {'catch-up median':>16} {'replay median':>14} {'ratio':>6}")
    for behind in (1, 3, MAX_BEHIND):
        for label, source in (("path", str(repo)), ("file://", repo.as_uri())):
            ups, full = [], []
            for run in range(runs):
                stale = root / f"stale-{behind}-{run}"
                replay(stale, repo=source, baseline_sha=sha, checkpoints=metas[:n - behind], arts=arts)
                t0 = time.perf_counter()
                ws = catch_up(stale, metas[:n], sha, arts)
                ups.append(time.perf_counter() - t0)
                assert ws is not None and ws.head_tree() == metas[n - 1]["treeAfter"]
                t0 = time.perf_counter()
                replay(root / f"full-{behind}-{run}", repo=source, baseline_sha=sha, checkpoints=metas[:n], arts=arts)
                full.append(time.perf_counter() - t0)
                shutil.rmtree(stale)
                shutil.rmtree(root / f"full-{behind}-{run}")
            up, rep = statistics.median(ups), statistics.median(full)
            print(f"{behind:>6} {label:>10} {up * 1000:>14.1f}ms {rep * 1000:>12.1f}ms {up / rep:>6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes", default="10,50,100,200")
    opts = parser.parse_args()
    sizes = [int(s) for s in opts.sizes.split(",")]
    rng = random.Random(42)
    root = Path(tempfile.mkdtemp(prefix="bench-replay-"))
    try:
        repo, sha = make_baseline(root, rng)
        arts = JobArtifacts(root / "artifacts", "bench")
        ws = GitWorkspace.create(root / "ws", str(repo), sha)
        metas, write_times = [], []
        for i in range(max(sizes)):
            edit_step(ws.path, rng, i)
            t0 = time.perf_counter()
            meta = write_checkpoint(ws, arts, step_id=f"step{i}", step_index=i, attempt=1, summary="ok")
            write_times.append(time.perf_counter() - t0)
            metas.append(meta)
        patch_kb = statistics.mean(m["patchBytes"] for m in metas) / 1024
        files = statistics.mean(len(m["changedFiles"]) for m in metas)
        binary = sum(b"GIT binary patch" in arts.patch_path(m["stepIndex"]).read_bytes() for m in metas)
        print(f"baseline: 320 files; {len(metas)} checkpoints, mean patch {patch_kb:.1f} KiB, "
              f"{files:.1f} files changed per step, {binary} with binary patches")
        print(f"write_checkpoint: median {statistics.median(write_times) * 1000:.1f} ms, "
              f"worst {max(write_times) * 1000:.1f} ms")
        print(f"{'checkpoints':>11} {'replay median':>14} {'worst':>8} {'per ckpt':>9} {'naive median':>13} "
              f"{'git procs':>9}")
        for n in sizes:
            times, naive = [], []
            for run in range(opts.runs):
                dest = root / f"replayed-{n}-{run}"
                t0 = time.perf_counter()
                with _CountGit() as procs:
                    rebuilt = replay(dest, repo=str(repo), baseline_sha=sha, checkpoints=metas[:n], arts=arts)
                times.append(time.perf_counter() - t0)
                assert rebuilt.head_tree() == metas[n - 1]["treeAfter"]
                shutil.rmtree(dest)
                t0 = time.perf_counter()
                naive_replay(root / f"naive-{n}-{run}", str(repo), sha, metas[:n], arts)
                naive.append(time.perf_counter() - t0)
                shutil.rmtree(root / f"naive-{n}-{run}")
            med = statistics.median(times)
            print(f"{n:>11} {med:>13.3f}s {max(times):>7.3f}s {med / n * 1000:>7.1f}ms "
                  f"{statistics.median(naive):>12.3f}s {procs.count:>9}")
        catch_up_figures(root, repo, sha, metas, arts, max(opts.runs, 5))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
