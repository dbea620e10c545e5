"""Redactor throughput and streaming memory on generated agent-like logs.

    .venv/bin/python bench/bench_redact.py [--mb 100] [--runs 5] [--stream-gb 1] [--engines]

Prints MB/s (median and worst of ``--runs``) for ``Redactor.redact`` on one ~100 MB text and for
``StreamRedactor`` fed 64 KiB chunks of it, then the peak RSS of a fresh process that
stream-redacts a ``--stream-gb`` GB stream generated on the fly (never stored). The text mixes
agent prose, shell and pytest output, Python tracebacks, JSON log lines, env dumps and git diffs,
with a planted secret of some kind about every 100 lines; the redactor has the full rule set and
eight secret env values. Goal: >= 100 MB/s; below 50 MB/s is a defect (issue 7).

``--engines`` compares the two multi-pattern prefilters of the token catalog (Hyperscan, and the
pure-Python fallback: ``str.find`` per keyword) on 20 MB of the same text, catalog scan alone.
Also prints CPU-time figures (``process_time``): on a shared machine they vary less than wall time.
"""

from __future__ import annotations

import argparse
import random
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator

from celery_selfheal.core.redact import REDACTED, Redactor

CHUNK = 64 * 1024
def _split(text: str) -> list[str]:
    return text.split()


WORDS = _split(
    "the of and to in is for that with on as this it be are from at by or an was will update retry logic "
    "client module tests error failed passed line file return self request response status code json value "
    "data user id config path import class None True False install package version build run step attempt "
    "worker celery redis timeout connection handler parser schema migration fixture assert expected actual "
    "I'll now let's check whether because function variable docs README branch commit merge rebase"
)
ENV = {
    "GITHUB_TOKEN": "ghp_" + "Zq8" * 12,
    "OPENAI_API_KEY": "sk-proj-" + "Tk9xLm2" * 6,
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "AWS_SESSION_TOKEN": "FwoGZXIvYXdzEJr//////////wEaDM" + "q1w2e3r4" * 8,
    "DB_PASSWORD": "Corr3ct-Horse-Battery",
    "REDIS_PASSWORD": "r3d1s-s3cr3t-pw",
    "SLACK_BOT_TOKEN": "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
    "SENTRY_AUTH_TOKEN": "sntrys_eyJpYXQiOjE2OTAwMDAwMDB9_Q2xpZW50U2VjcmV0VmFsdWU",
    "HOME": "/home/agent",
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
}


def _sentence(rnd: random.Random) -> str:
    return " ".join(rnd.choices(WORDS, k=rnd.randint(5, 18)))


def _line_pool(rnd: random.Random) -> list[str]:
    """A few thousand varied log lines: what agents print, with planted secrets."""
    lines: list[str] = []
    for _ in range(4000):
        kind = rnd.random()
        if kind < 0.30:
            lines.append(_sentence(rnd).capitalize() + ".")
        elif kind < 0.42:
            lines.append(
                f'  File "/usr/lib/python3.11/site-packages/{rnd.choice(WORDS)}/{rnd.choice(WORDS)}.py", '
                f"line {rnd.randint(1, 2000)}, in {rnd.choice(WORDS)}_{rnd.choice(WORDS)}"
            )
            lines.append(f"    return self._{rnd.choice(WORDS)}(request, timeout={rnd.randint(1, 60)})")
        elif kind < 0.47:
            error = rnd.choice(["KeyError", "ValueError", "TimeoutError", "AssertionError"])
            lines.append(f"{error}: '{rnd.choice(WORDS)}'")
        elif kind < 0.65:
            lines.append(
                f'{{"ts": "2024-05-01T12:{rnd.randint(0, 59):02d}:{rnd.randint(0, 59):02d}Z", '
                f'"level": "{rnd.choice(["info", "debug", "warning"])}", "msg": "{_sentence(rnd)}", '
                f'"prompt_tokens": {rnd.randint(10, 9000)}, "max_tokens": 4096, "model": "gpt-4o", '
                f'"cache_key": "c{rnd.getrandbits(32):x}", "request_id": "{rnd.getrandbits(128):032x}"}}'
            )
        elif kind < 0.72:
            name = f"{rnd.choice(WORDS).upper()}_{rnd.choice(WORDS).upper()}"
            lines.append(f"{name}=/opt/{rnd.choice(WORDS)}/{rnd.choice(WORDS)}")
        elif kind < 0.82:
            lines.append(f"diff --git a/src/{rnd.choice(WORDS)}.py b/src/{rnd.choice(WORDS)}.py")
            lines.append(f"index {rnd.getrandbits(28):07x}..{rnd.getrandbits(28):07x} 100644")
            a, b, c = rnd.choices(WORDS, k=3)
            lines.append(f"@@ -{rnd.randint(1, 400)},7 +{rnd.randint(1, 400)},9 @@ def {a}(self):")
            lines.append(f"-        {a} = {b}({c})")
            lines.append(f"+        {a} = self.{b}.get({c!r}, None)")
        elif kind < 0.92:
            lines.append(
                f"tests/test_{rnd.choice(WORDS)}.py::test_{rnd.choice(WORDS)}_{rnd.choice(WORDS)} "
                f"{rnd.choice(['PASSED', 'FAILED', 'PASSED', 'SKIPPED'])} [{rnd.randint(0, 100):3d}%]"
            )
        elif kind < 0.99:
            lines.append(
                f"$ git commit -m '{_sentence(rnd)}' && curl -sS https://api.example.com/v1/{rnd.choice(WORDS)}"
            )
        else:
            lines.append(_planted(rnd))
    return lines


def _planted(rnd: random.Random) -> str:
    tok = "".join(rnd.choices("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", k=36))
    return rnd.choice(
        [
            f"export GITHUB_TOKEN={ENV['GITHUB_TOKEN']}",
            f"using token ghp_{tok}",
            f"AWS_ACCESS_KEY_ID=AKIA{tok[:16].upper()}",
            f"curl -H 'Authorization: Bearer {tok}' https://api.example.com",
            f"connecting to postgres://app:{ENV['DB_PASSWORD']}@db:5432/app",
            f'{{"password": "{tok[:12]}", "user": "app"}}',
            f"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ{tok}.{tok[:20]}",
            f"-----BEGIN RSA PRIVATE KEY-----\nMIIEpA{tok}\n{tok}\n-----END RSA PRIVATE KEY-----",
            f"OPENAI_API_KEY={ENV['OPENAI_API_KEY']}",
        ]
    )


def generate(nbytes: int, seed: int = 7) -> str:
    """About ``nbytes`` characters of agent-like log text."""
    rnd = random.Random(seed)
    pool = _line_pool(rnd)
    parts: list[str] = []
    size = 0
    while size < nbytes:
        block = "\n".join(rnd.choices(pool, k=2000)) + "\n"
        parts.append(block)
        size += len(block)
    return "".join(parts)


def chunks(text: str, size: int = CHUNK) -> Iterator[str]:
    for i in range(0, len(text), size):
        yield text[i : i + size]


def _time(fn, runs: int) -> list[tuple[float, float]]:
    times = []
    for _ in range(runs):
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        times.append((time.perf_counter() - start, time.process_time() - cpu))
    return times


def bench_engines(runs: int) -> None:
    """The catalog's prefilter engines side by side (the catalog scan only)."""
    from celery_selfheal.core.redact_catalog import catalog_for

    text = generate(20_000_000)
    low = text.lower()
    batch = 256 * 1024
    pieces = [(text[i : i + batch], low[i : i + batch]) for i in range(0, len(text), batch)]
    for engine in ("hyperscan", "python"):
        catalog = catalog_for((), engine)

        def scan(catalog=catalog) -> None:  # type: ignore[no-untyped-def]
            for piece, piece_low in pieces:
                catalog.scan(piece, piece_low, [], {})

        n = len(catalog.rules) + len(catalog.contexts)
        _report(f"catalog scan, {engine} ({n} rules)", len(text) / 1e6, _time(scan, 1 if engine == "python" else runs))


def _report(label: str, mb: float, times: list[tuple[float, float]]) -> None:
    wall = [w for w, _ in times]
    cpu = statistics.median(c for _, c in times)
    med, worst = statistics.median(wall), max(wall)
    print(f"{label:34s} median {mb / med:7.1f} MB/s   worst {mb / worst:7.1f} MB/s   "
          f"cpu-time median {mb / cpu:7.1f} MB/s   ({len(times)} runs)")


def bench_throughput(mb: int, runs: int) -> None:
    text = generate(mb * 1_000_000)
    size = len(text) / 1e6
    redactor = Redactor(env=ENV)
    out = redactor.redact(text)
    print(f"text: {size:.1f} MB, {text.count(chr(10))} lines, {out.count(REDACTED)} redactions, "
          f"window {redactor.window} chars")
    leaked = [v for k, v in ENV.items() if k not in ("HOME", "PATH", "LANG") and v in out]
    print(f"planted env secrets left after redact(): {len(leaked)}")

    def stream() -> str:
        s = redactor.stream()
        return "".join([s.feed(c) for c in chunks(text)]) + s.flush()

    assert stream() == out, "streamed and whole redaction differ"
    _report("redact() whole text", size, _time(lambda: redactor.redact(text), runs))
    _report("stream, 64 KiB chunks", size, _time(stream, runs))
    bench_chain(redactor)


def bench_chain(redactor: Redactor, blocks: int = 8) -> None:
    """The slowest input: overlapping name=value chains (every name a secret's, every value
    seen again), ``blocks`` chunks of 64 KiB streamed once."""
    block = "password=password=" * 3641

    def chain() -> None:
        s = redactor.stream()
        for _ in range(blocks):
            s.feed(block)
        s.flush()

    _report(f"stream, {blocks} x 64 KiB password=password=...", blocks * len(block) / 1e6, _time(chain, 1))


def _peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB (VmHWM: ``ru_maxrss`` can carry over the
    parent's peak across fork/exec)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stream_gb(gb: float) -> None:
    """Stream-redact ``gb`` GB generated on the fly; print peak RSS before and after."""
    rnd = random.Random(11)
    pool = _line_pool(rnd)
    redactor = Redactor(env=ENV)
    s = redactor.stream()
    base = _peak_rss_mib()
    total, emitted, start = 0, 0, time.perf_counter()
    target = int(gb * 1e9)
    while total < target:
        block = "\n".join(rnd.choices(pool, k=700)) + "\n"  # ~64 KiB
        total += len(block)
        emitted += len(s.feed(block))
    emitted += len(s.flush())
    elapsed = time.perf_counter() - start
    peak = _peak_rss_mib()
    print(
        f"stream {total / 1e9:.2f} GB in {elapsed:.1f} s "
        f"({total / 1e6 / elapsed:.1f} MB/s incl. generation), "
        f"emitted {emitted / 1e9:.2f} GB; peak RSS {peak:.1f} MiB (before streaming {base:.1f} MiB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--stream-gb", type=float, default=1.0)
    parser.add_argument("--only-stream", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--engines", action="store_true", help="compare the catalog prefilters")
    args = parser.parse_args()
    if args.engines:
        bench_engines(args.runs)
        return
    if args.only_stream:
        stream_gb(args.stream_gb)
        return
    if args.mb:
        bench_throughput(args.mb, args.runs)
    if args.stream_gb:  # a fresh process, so the 100 MB text above does not count in the peak
        cmd = [sys.executable, __file__, "--only-stream", "--stream-gb", str(args.stream_gb)]
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
