"""The job file (DESIGN section 6): TOML or JSON, one shape, strict validation.

Every error is an :class:`InputError` (``ConfigError`` for budget values) whose ``str()`` is one
line naming the file and the key or step, e.g.
``job.toml: steps[1] (id 'build'): step_timeout_seconds: must be > 0, got -1``.
Unknown keys anywhere are errors: a typo must never pass silently.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from celery_selfheal.core.budgets import BUDGET_KEYS, STEP_KEYS, format_key, validate_overrides
from celery_selfheal.core.input_limits import check_shape, check_text
from celery_selfheal.errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

STEP_ID_RE = r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}"
_ID = re.compile(STEP_ID_RE)
#: artifact names carry zero-padded 4-digit step indexes (step-0000 ... step-9999)
MAX_STEPS = 10_000

_TOP_KEYS = ("job", "steps")
_JOB_KEYS = ("id", "objective", "repo", "ref", "runtime", "selfheal")
_STEP_FIELDS = ("id", "title", "instructions", "runtime")


@dataclass(frozen=True)
class StepSpec:
    """One validated step of a job."""

    #: unique within the job, matches :data:`STEP_ID_RE`
    id: str
    #: zero-based position in the job
    index: int
    #: short human title (defaults to the id)
    title: str
    #: what the runtime is asked to do on the first attempt
    instructions: str
    #: command overriding the job's runtime, or None
    runtime: tuple[str, ...] | None
    #: step-level budget overrides (keys from ``STEP_KEYS``)
    overrides: Mapping[str, int | float] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class JobSpec:
    """A validated job file."""

    #: explicit job id, or None to let the submitter pick one
    id: str | None
    objective: str
    #: baseline repository path or URL, as written (relative paths are resolved by the caller)
    repo: str
    #: git ref of the baseline (resolved to a sha when the job is submitted)
    ref: str
    #: default runtime command of every step, or None when every step has its own
    runtime: tuple[str, ...] | None
    #: ``[job.selfheal]`` budget overrides
    overrides: Mapping[str, int | float] = field(default_factory=dict, hash=False)
    steps: tuple[StepSpec, ...] = ()

    def step_runtime(self, index: int) -> tuple[str, ...]:
        """The command that runs step ``index``: its own runtime, else the job's."""
        runtime = self.steps[index].runtime or self.runtime
        if runtime is None:  # parse_job never lets this happen
            raise ValueError(f"step {index} has no runtime and the job has none")
        return runtime

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; :meth:`from_dict` reverses it exactly."""
        return {
            "id": self.id,
            "objective": self.objective,
            "repo": self.repo,
            "ref": self.ref,
            "runtime": list(self.runtime) if self.runtime is not None else None,
            "overrides": dict(self.overrides),
            "steps": [
                {
                    "id": s.id,
                    "index": s.index,
                    "title": s.title,
                    "instructions": s.instructions,
                    "runtime": list(s.runtime) if s.runtime is not None else None,
                    "overrides": dict(s.overrides),
                }
                for s in self.steps
            ],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> JobSpec:
        """Rebuild a spec from :meth:`to_dict` output (e.g. read back from a store)."""
        try:
            steps = tuple(
                StepSpec(
                    id=s["id"],
                    index=int(s["index"]),
                    title=s["title"],
                    instructions=s["instructions"],
                    runtime=tuple(s["runtime"]) if s.get("runtime") is not None else None,
                    overrides=_frozen(validate_overrides(s.get("overrides") or {}, where="step")),
                )
                for s in d["steps"]
            )
            return cls(
                id=d.get("id"),
                objective=d["objective"],
                repo=d["repo"],
                ref=d["ref"],
                runtime=tuple(d["runtime"]) if d.get("runtime") is not None else None,
                overrides=_frozen(validate_overrides(d.get("overrides") or {}, where="job")),
                steps=steps,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"not a serialized job spec: {exc!r}", where="job spec") from None


def _frozen(d: Mapping[str, int | float]) -> Mapping[str, int | float]:
    return MappingProxyType(dict(d))


def _show(value: Any, limit: int = 60) -> str:
    """A short one-line rendering of a bad value for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type_name(value: Any) -> str:
    names = {dict: "table", list: "array", str: "string", bool: "boolean", int: "integer", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json keeps the last of duplicate keys silently; TOML rejects them, and so do we.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _loads(text: str, source: str, fmt: str) -> Any:
    if fmt not in ("toml", "json"):
        raise InputError(f"unknown job file format {fmt!r}; expected 'toml' or 'json'", where=source)
    try:
        if fmt == "toml":
            return tomllib.loads(text)
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as exc:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        reason = " ".join(str(exc).split()) if isinstance(exc, ValueError) else "nested too deeply"
        raise InputError(f"invalid {fmt.upper()}: {reason}", where=source) from None


def _check_keys(table: Mapping[str, Any], known: tuple[str, ...], *, where: str) -> None:
    for key in table:
        if key not in known:
            raise InputError(
                f"unknown key; expected one of: {', '.join(known)}", where=where + format_key(key)
            )


def _text(table: Mapping[str, Any], key: str, *, where: str, required: bool = True) -> str | None:
    """A non-blank string at ``table[key]``; None when absent and not required."""
    if key not in table:
        if required:
            raise InputError("required", where=f"{where}{key}")
        return None
    value = table[key]
    if not isinstance(value, str):
        raise InputError(f"must be a string, got {_type_name(value)} {_show(value)}", where=f"{where}{key}")
    if not value.strip():
        raise InputError("must not be empty", where=f"{where}{key}")
    return value


def _ident(table: Mapping[str, Any], key: str, *, where: str, required: bool) -> str | None:
    value = _text(table, key, where=where, required=required)
    if value is not None and (not _ID.fullmatch(value) or value in (".", "..")):
        raise InputError(
            f"must match {STEP_ID_RE} and not be '.' or '..', got {_show(value)}", where=f"{where}{key}"
        )
    return value


def _runtime(table: Mapping[str, Any], *, where: str) -> tuple[str, ...] | None:
    if "runtime" not in table:
        return None
    value = table["runtime"]
    at = f"{where}runtime"
    if not isinstance(value, list) or not value:
        raise InputError(
            f"must be a non-empty array of strings (command and arguments), got {_show(value)}", where=at
        )
    for i, part in enumerate(value):
        if not isinstance(part, str) or not part:
            raise InputError(f"must be a non-empty string, got {_show(part)}", where=f"{at}[{i}]")
    return tuple(value)


def _step(raw: Any, index: int, source: str) -> StepSpec:
    label = f"{source}: steps[{index}]"
    if not isinstance(raw, dict):
        raise InputError(f"must be a table, got {_type_name(raw)}", where=label)
    step_id = _ident(raw, "id", where=f"{label}: ", required=True)
    assert step_id is not None
    label = f"{label} (id {step_id!r})"
    where = f"{label}: "
    for key in raw:
        if key in _STEP_FIELDS or key in STEP_KEYS:
            continue
        if key in BUDGET_KEYS:
            raise InputError("is a job-level budget; set it in [job.selfheal]", where=where + key)
        allowed = ", ".join((*_STEP_FIELDS, *sorted(STEP_KEYS)))
        raise InputError(f"unknown key; expected one of: {allowed}", where=where + format_key(key))
    instructions = _text(raw, "instructions", where=where)
    assert instructions is not None
    overrides = {k: v for k, v in raw.items() if k in STEP_KEYS}
    return StepSpec(
        id=step_id,
        index=index,
        title=_text(raw, "title", where=where, required=False) or step_id,
        instructions=instructions,
        runtime=_runtime(raw, where=where),
        overrides=_frozen(validate_overrides(overrides, where=label, allowed=STEP_KEYS, sep=": ")),
    )


def parse_job(text: str, *, source: str, fmt: str | None = None) -> JobSpec:
    """Parse and validate a job file's text; ``source`` names the file in every error.

    ``fmt`` is ``"toml"`` or ``"json"``; None guesses from ``source`` (``.json`` -> JSON, else TOML).
    """
    if fmt is None:
        fmt = "json" if source.lower().endswith(".json") else "toml"
    check_text(text, source=source, fmt=fmt)
    doc = _loads(text, source, fmt)
    check_shape(doc, source=source)
    if not isinstance(doc, dict):
        raise InputError(f"must be a table/object at the top level, got {_type_name(doc)}", where=source)
    _check_keys(doc, _TOP_KEYS, where=f"{source}: ")
    job = doc.get("job")
    if job is None:
        raise InputError("[job] table required", where=source)
    if not isinstance(job, dict):
        raise InputError(f"must be a table, got {_type_name(job)}", where=f"{source}: job")
    jw = f"{source}: job."
    _check_keys(job, _JOB_KEYS, where=jw)
    job_id = _ident(job, "id", where=jw, required=False)
    objective, repo, ref = (_text(job, key, where=jw) for key in ("objective", "repo", "ref"))
    runtime = _runtime(job, where=jw)
    selfheal = job.get("selfheal", {})
    if not isinstance(selfheal, dict):
        raise InputError(f"must be a table, got {_type_name(selfheal)}", where=f"{jw}selfheal")
    overrides = validate_overrides(selfheal, where=f"{jw}selfheal")

    raw_steps, sw = doc.get("steps"), f"{source}: steps"
    if raw_steps is None:
        raise InputError("required: at least one [[steps]] table", where=sw)
    if not isinstance(raw_steps, list) or not raw_steps:
        raise InputError(f"must be a non-empty array of tables, got {_show(raw_steps)}", where=sw)
    if len(raw_steps) > MAX_STEPS:
        raise InputError(f"at most {MAX_STEPS} steps, got {len(raw_steps)}", where=sw)
    steps: list[StepSpec] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(raw_steps):
        step = _step(raw, index, source)
        if step.id in seen:
            raise InputError(
                f"duplicate of steps[{seen[step.id]}]", where=f"{source}: steps[{index}] (id {step.id!r}): id"
            )
        seen[step.id] = index
        if runtime is None and step.runtime is None:
            raise InputError(
                f"required: steps[{index}] (id {step.id!r}) has no runtime of its own", where=f"{jw}runtime"
            )
        steps.append(step)
    assert objective is not None and repo is not None and ref is not None
    return JobSpec(
        id=job_id,
        objective=objective,
        repo=repo,
        ref=ref,
        runtime=runtime,
        overrides=_frozen(overrides),
        steps=tuple(steps),
    )
