"""Redactor recall per provider family and false-positive rate, on the project's own corpus.

    .venv/bin/python bench/bench_redact_corpus.py [--families]

Positives: every example of every rule in ``celery_selfheal/core/rules/secrets.toml``, planted in
eleven realistic contexts that do not name it a secret (bare, echoed, JSON, XML, a query string,
a traceback...), plus the hand-written context corpus ``tests/core/data/redact_contexts.json``
(XML settings, make/shell operators, curl/mysql/docker flags, .netrc, .pgpass, auth schemes,
long values, copies of a secret printed again). A positive counts as caught when its secret part
is gone. Negatives: ``tests/core/data/redact_negatives.txt`` (log lines, tracebacks, CI output,
docs text) and 20 000 generated agent-log lines without planted secrets; a false positive is a
line the redactor changes. The rules file is read by path, so the same corpus can be run against
another version of the package (``PYTHONPATH=<old checkout> python bench/bench_redact_corpus.py``).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import bench_redact  # noqa: E402  (the agent-log generator)

from celery_selfheal.core.redact import Redactor  # noqa: E402

#: the places a token is printed in, none naming it a secret (shared with the per-rule tests)
CONTEXTS = tuple(json.loads((ROOT / "tests/core/data/token_contexts.json").read_text()))


def positives() -> list[tuple[str, str, list[str]]]:
    """(family, text, secrets that must be gone)."""
    rules = tomllib.loads((ROOT / "celery_selfheal/core/rules/secrets.toml").read_text())["rule"]
    out = []
    for rule in rules:
        regex = re.compile(rule["regex"])
        for example in rule["examples"]:
            m = regex.match(example)
            assert m is not None, rule["id"]
            secret = m.group("secret") if "secret" in regex.groupindex else example
            out += [(rule["family"], ctx.format(s=example), [secret]) for ctx in CONTEXTS]
    for case in json.loads((ROOT / "tests/core/data/redact_contexts.json").read_text()):
        out.append((f"context:{case['kind']}", case["text"], case["secrets"]))
    return out


def negatives() -> list[str]:
    """Lines that hold no secret."""
    text = (ROOT / "tests/core/data/redact_negatives.txt").read_text()
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    bench_redact._planted = lambda rnd: "nothing planted here"  # type: ignore[assignment]
    pool = bench_redact._line_pool(random.Random(5))
    return lines + random.Random(6).choices(pool, k=20_000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", action="store_true", help="print recall for every family")
    args = parser.parse_args()
    redactor = Redactor(env={})
    per: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for family, text, secrets in positives():
        out = redactor.redact(text)
        per[family][0] += 1
        per[family][1] += all(s not in out for s in secrets)
    total = sum(n for n, _ in per.values())
    caught = sum(c for _, c in per.values())
    tokens = [(f, n, c) for f, (n, c) in per.items() if not f.startswith("context:")]
    families_full = sum(1 for _, n, c in tokens if c == n)
    print(f"positives: {total}, caught {caught}: recall {100 * caught / total:.1f} %")
    tn, tc = sum(n for _, n, _ in tokens), sum(c for _, _, c in tokens)
    print(f"token formats: {tn} plantings, recall {100 * tc / tn:.1f} %; "
          f"{families_full}/{len(tokens)} provider families at 100 %")
    for family, (n, c) in sorted(per.items()):
        if args.families or family.startswith("context:") or c < n:
            print(f"  {family:28s} {c:4d}/{n:<4d} {100 * c / n:6.1f} %")
    lines = negatives()
    changed = [ln for ln in lines if redactor.redact(ln) != ln]
    print(f"negatives: {len(lines)} lines, changed {len(changed)}: false-positive rate "
          f"{100 * len(changed) / len(lines):.2f} %")
    for line in changed[:10]:
        print(f"  FP: {line[:100]!r}")


if __name__ == "__main__":
    main()
