"""Canary secrets: one realistic value per kind the redactor must remove (issue 7, DESIGN REQ-12),
and a finder that looks for them (and their encoded forms) in anything a test collects.

Values are random per ``seed``, so two runs print different secrets of the same kinds (the failure
signature must not change) and a hit can never be a coincidence with fixed test text.

The finder looks for each secret's *random part* (a fixed prefix such as ``ghp_`` or a PEM header
is not secret by itself) as:

- raw windows (:data:`WINDOW` characters every :data:`STRIDE`): a partly redacted secret, with only
  a tail left, is still found;
- URL-encoded and JSON-escaped whole values;
- base64 (standard and URL-safe, at each of the three byte alignments) of the whole value, so a
  secret inside a base64 message body (kombu encodes bodies in base64) is found without decoding;

all ignoring ASCII case. The blob helpers at the end turn the places a test searches (a directory
tree, a Redis ``MONITOR`` stream, broker message files) into ``(where, bytes)`` pairs, with the
base64 bodies of broker messages decoded as well.
"""

from __future__ import annotations

import base64
import codecs
import contextlib
import json
import random
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, quote_plus

#: length of the raw windows looked for
WINDOW = 12
#: distance between two windows: a leaked fragment of ``WINDOW + STRIDE - 1`` characters is found
STRIDE = 6

ALNUM = string.ascii_letters + string.digits
UPPER_DIGITS = string.ascii_uppercase + string.digits
B64 = ALNUM + "+/"
URLSAFE = ALNUM + "-_"


@dataclass(frozen=True)
class Canary:
    """One secret as a runtime prints it."""

    #: what it is (``github-ghp``, ``pem-unterminated``, ``env-plain`` ...)
    kind: str
    #: the printed text (may span lines: PEM)
    text: str
    #: the parts that must never appear anywhere (the secret without its fixed prefix)
    secrets: tuple[str, ...]


def _rand(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _pem(rng: random.Random, label: str, lines: int, *, terminated: bool) -> Canary:
    body = [_rand(rng, B64, 64) for _ in range(lines)]
    text = "\n".join([f"-----BEGIN {label} PRIVATE KEY-----", *body])
    if terminated:
        text += f"\n-----END {label} PRIVATE KEY-----"
    return Canary("pem" if terminated else "pem-unterminated", text, tuple(body))


def _jwt(rng: random.Random) -> Canary:
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    payload = _b64url(json.dumps({"sub": _rand(rng, ALNUM, 40)}, separators=(",", ":")).encode())
    sig = _rand(rng, URLSAFE, 43)
    # The header is the same in every HS256 token, and the payload's ends encode '{"sub":"' and
    # '"}': only the rest is secret (and only the rest cannot match other base64 by chance).
    return Canary("jwt", f"{header}.{payload}.{sig}", (payload[12:-4], sig))


def token_canaries(seed: int) -> list[Canary]:
    """One canary per well-known secret shape (single-line ones first, PEM blocks last)."""
    rng = random.Random(seed)

    def token(kind: str, prefix: str, alphabet: str, n: int) -> Canary:
        value = _rand(rng, alphabet, n)
        return Canary(kind, prefix + value, (value,))

    def assign(kind: str, template: str, value: str) -> Canary:
        return Canary(kind, template.format(value), (value,))

    pat = f"github_pat_{_rand(rng, ALNUM, 22)}_{_rand(rng, ALNUM, 59)}"
    out = [
        token("github-ghp", "ghp_", ALNUM, 36),
        token("github-gho", "gho_", ALNUM, 36),
        token("github-ghu", "ghu_", ALNUM, 36),
        token("github-ghs", "ghs_", ALNUM, 36),
        token("github-ghr", "ghr_", ALNUM, 36),
        Canary("github-pat", pat, (pat.removeprefix("github_pat_"),)),
        token("aws-akia", "AKIA", UPPER_DIGITS, 16),
        token("aws-asia", "ASIA", UPPER_DIGITS, 16),
        assign("aws-secret-access-key", "aws_secret_access_key = {}", _rand(rng, B64, 40)),
        assign("aws-secret-env", "export AWS_SECRET_ACCESS_KEY={}", _rand(rng, B64, 40)),
        token("slack-bot", f"xoxb-{rng.randrange(10**11, 10**12)}-{rng.randrange(10**11, 10**12)}-",
              ALNUM, 24),
        token("slack-user", f"xoxp-{rng.randrange(10**11, 10**12)}-", ALNUM, 32),
        _jwt(rng),
        assign("bearer-header", "Authorization: Bearer {}", _rand(rng, ALNUM + "._-", 40)),
        assign("bearer-bare", "upstream said 401 to Bearer {}", _rand(rng, ALNUM, 32)),
        assign("url-password", "cloning https://deploy:{}@git.example.com/org/repo.git",
               _rand(rng, ALNUM, 10) + "!$" + _rand(rng, ALNUM, 8)),
        assign("url-password-db", "DATABASE_URL=postgres://app:{}@db.internal:5432/app", _rand(rng, ALNUM, 24)),
        assign("password-assign", "login failed: password={}", _rand(rng, ALNUM + "#%^*", 18)),
        assign("json-api-key", '{{"user": "ci", "api_key": "{}", "region": "eu"}}', _rand(rng, ALNUM, 32)),
        token("openai-sk", "sk-", ALNUM, 48),
        token("openai-sk-proj", "sk-proj-", ALNUM + "_-", 64),
        token("anthropic-sk-ant", "sk-ant-api03-", ALNUM + "_-", 95),
        token("google-aiza", "AIza", URLSAFE, 35),
        token("gitlab-glpat", "glpat-", URLSAFE, 20),
        token("npm", "npm_", ALNUM, 36),
        token("huggingface-hf", "hf_", string.ascii_letters, 34),
        token("stripe-live", "sk_live_", ALNUM, 24),
        # provider formats of the token catalog (issue 14), printed with no name beside them
        token("digitalocean", "dop_v1_", "0123456789abcdef", 64),
        token("pypi", "pypi-AgEIcHlwaS5vcmc", URLSAFE, 80),
        token("vault-hvs", "hvs.", URLSAFE, 90),
        token("shopify", "shpat_", "0123456789abcdef", 32),
        token("postman", f"PMAK-{_rand(rng, '0123456789abcdef', 24)}-", "0123456789abcdef", 34),
        assign("xml-password", "<settings><password>{}</password></settings>", _rand(rng, ALNUM, 20)),
        assign("curl-user", "curl -sS -u ci:{} https://api.example.com/v1", _rand(rng, ALNUM, 20)),
        _pem(rng, "RSA", 4, terminated=True),
    ]
    return out


def unterminated_pem(seed: int) -> Canary:
    """An OpenSSH private key cut off before its END line (redacted to the end of the stream)."""
    return _pem(random.Random(seed * 7919 + 1), "OPENSSH", 3, terminated=False)


#: secret-named env vars set in the worker's environment (values only the runtime knows)
ENV_NAMES = ("MY_SERVICE_TOKEN", "DB_PASSWORD", "ACME_CLIENT_SECRET")


def env_canaries(seed: int) -> dict[str, str]:
    """Values for :data:`ENV_NAMES`: no token shape (only the env-value rule can find them), with
    characters that URL-encoding changes (``@ / + : space``)."""
    rng = random.Random(seed * 104729 + 3)
    return {
        "MY_SERVICE_TOKEN": f"svc.{_rand(rng, ALNUM, 20)}.{_rand(rng, ALNUM, 6)}",
        "DB_PASSWORD": f"{_rand(rng, ALNUM, 8)}@/+:{_rand(rng, ALNUM, 6)} {_rand(rng, ALNUM, 6)}",
        "ACME_CLIENT_SECRET": f"{_rand(rng, ALNUM, 14)}+{_rand(rng, ALNUM, 14)}/Q",
    }


#: how the runtime prints an env value (see tests/runtimes/agent.py, ``env-value``)
ENV_FORMS = ("plain", "base64", "base64nl", "url")


def encode_env(value: str, form: str) -> str:
    """``value`` as printed in ``form``: plain, base64 (of the value, or of value + newline, as
    ``echo $X | base64`` prints it) or URL-encoded."""
    if form == "plain":
        return value
    if form == "base64":
        return base64.b64encode(value.encode()).decode()
    if form == "base64nl":
        return base64.b64encode(value.encode() + b"\n").decode()
    if form == "url":
        return quote(value, safe="")
    raise ValueError(form)


def env_secret_forms(env: Mapping[str, str]) -> list[Canary]:
    """Each env value in each printed form, as a canary to look for."""
    return [Canary(f"env-{form}:{name}", encode_env(v, form), (encode_env(v, form).rstrip("="),))
            for name, v in env.items() for form in ENV_FORMS]


# ------------------------------------------------------------------------------------------ finder


def _b64_needles(secret: str) -> set[str]:
    """Base64 text that any encoding of ``secret`` contains, whatever the byte alignment."""
    data = secret.encode()
    out: set[str] = set()
    for k in range(3):
        for enc in (base64.b64encode, base64.urlsafe_b64encode):
            text = enc(b"\0" * k + data).decode()
            first = -(-8 * k // 6)  # first character made of secret bits only
            last = (8 * (k + len(data))) // 6  # characters before this are made of secret bits only
            if last - first >= WINDOW:
                out.add(text[first:last])
    return out


@dataclass(frozen=True)
class Needle:
    """One string to look for and the canary it betrays."""

    text: bytes
    kind: str
    how: str


def needles(canaries: Iterable[Canary]) -> list[Needle]:
    """Everything that betrays one of ``canaries``: raw windows, encodings of the whole value."""
    out: dict[bytes, Needle] = {}

    def add(text: str, kind: str, how: str) -> None:
        if len(text) >= WINDOW:
            out.setdefault(text.encode(), Needle(text.encode(), kind, how))

    for canary in canaries:
        for secret in canary.secrets:
            if len(secret) < WINDOW:
                raise ValueError(f"{canary.kind}: secret shorter than {WINDOW} characters")
            for i in range(0, len(secret) - WINDOW + 1, STRIDE):
                add(secret[i : i + WINDOW], canary.kind, "raw")
            add(secret[-WINDOW:], canary.kind, "raw")
            for how, form in (("url", quote(secret, safe="")), ("url+", quote_plus(secret)),
                              ("json", json.dumps(secret)[1:-1])):
                if form != secret:
                    add(form, canary.kind, how)
            for b in _b64_needles(secret):
                add(b, canary.kind, "base64")
    return list(out.values())


@dataclass(frozen=True)
class Hit:
    """A canary found somewhere."""

    where: str
    kind: str
    how: str
    context: str

    def __str__(self) -> str:
        return f"{self.where}: {self.kind} ({self.how}) in ...{self.context}..."


def find_canaries(blobs: Iterable[tuple[str, bytes]], found_by: Sequence[Needle]) -> list[Hit]:
    """Every needle occurrence (the first per needle and place) in ``(where, data)`` pairs,
    ignoring ASCII case (a sink that lowercases must not hide a secret)."""
    hits: list[Hit] = []
    lowered = [n.text.lower() for n in found_by]
    for where, data in blobs:
        low = data.lower()
        for needle, text in zip(found_by, lowered, strict=True):
            at = low.find(text)
            if at >= 0:
                ctx = data[max(0, at - 40) : at + len(needle.text) + 40].decode("utf-8", "replace")
                hits.append(Hit(where, needle.kind, needle.how, ctx))
    return hits


# ------------------------------------------------------------------------- places to look, as blobs

Blob = tuple[str, bytes]
_MONITOR_ARG = re.compile(rb'"((?:[^"\\]|\\.)*)"')


def decoded_bodies(where: str, values: Iterable[bytes]) -> list[Blob]:
    """The base64 bodies of the kombu messages among ``values`` (``{"body": ..., ...}``), decoded;
    named ``<where> (body)``."""
    out = []
    for value in values:
        try:
            doc = json.loads(value)
        except ValueError:
            continue
        if isinstance(doc, dict) and isinstance(doc.get("body"), str):
            with contextlib.suppress(ValueError):
                out.append((f"{where} (body)", base64.b64decode(doc["body"])))
    return out


def monitor_blobs(raw: bytes) -> list[Blob]:
    """A Redis ``MONITOR`` stream: raw, its arguments unescaped, and the message bodies decoded
    (kombu keeps ``{"body": <base64>, ...}`` in lists and hashes and PUBLISHes events so)."""
    args = [codecs.escape_decode(m.group(1))[0] for m in _MONITOR_ARG.finditer(raw)]
    return [("redis MONITOR", raw), ("redis MONITOR (arguments)", b"\n".join(args)),
            *decoded_bodies("redis MONITOR", args)]


def tree_blobs(root: Path) -> list[Blob]:
    """Every file under ``root`` (SQLite database and WAL, broker folders, artifacts, logs, prompts),
    and the bodies of the broker message files among them."""
    out: list[Blob] = []
    for path in sorted(root.rglob("*")):
        if path.is_file():
            where = f"{root.name}/{path.relative_to(root)}"
            data = path.read_bytes()
            out += [(where, data), *decoded_bodies(where, [data])]
    return out
