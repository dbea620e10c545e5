from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from celery_selfheal.core.budgets import STEP_KEYS
from celery_selfheal.core.jobfile import MAX_STEPS, JobSpec, parse_job
from celery_selfheal.errors import ConfigError, InputError

GOOD = """\
[job]
id = "job-1"
objective = "Add retry support"
repo = "../repo"
ref = "main"
runtime = ["agent", "--non-interactive"]

[job.selfheal]
step_idle_timeout_seconds = 60
job_queue_max_retries = 0

[[steps]]
id = "implement"
title = "Implement the change"
instructions = "Write the code."

[[steps]]
id = "build"
instructions = "Make it build."
runtime = ["make"]
step_timeout_seconds = 30
step_max_attempts = 5
"""


def test_parses_the_design_example():
    job = parse_job(GOOD, source="job.toml")
    assert (job.id, job.objective, job.repo, job.ref) == ("job-1", "Add retry support", "../repo", "main")
    assert job.runtime == ("agent", "--non-interactive")
    assert dict(job.overrides) == {"step_idle_timeout_seconds": 60.0, "job_queue_max_retries": 0}
    implement, build = job.steps
    assert (implement.id, implement.index, implement.title, implement.runtime) == (
        "implement",
        0,
        "Implement the change",
        None,
    )
    assert (build.index, build.title, build.runtime) == (1, "build", ("make",))  # title defaults to id
    assert dict(build.overrides) == {"step_timeout_seconds": 30.0, "step_max_attempts": 5}
    assert job.step_runtime(0) == ("agent", "--non-interactive")
    assert job.step_runtime(1) == ("make",)


def test_json_is_the_same_shape_and_round_trips():
    toml_job = parse_job(GOOD, source="job.toml")
    as_json = json.dumps(
        {
            "job": {
                "id": "job-1",
                "objective": "Add retry support",
                "repo": "../repo",
                "ref": "main",
                "runtime": ["agent", "--non-interactive"],
                "selfheal": {"step_idle_timeout_seconds": 60, "job_queue_max_retries": 0},
            },
            "steps": [
                {"id": "implement", "title": "Implement the change", "instructions": "Write the code."},
                {
                    "id": "build",
                    "instructions": "Make it build.",
                    "runtime": ["make"],
                    "step_timeout_seconds": 30,
                    "step_max_attempts": 5,
                },
            ],
        }
    )
    assert parse_job(as_json, source="job.json") == toml_job
    assert JobSpec.from_dict(json.loads(json.dumps(toml_job.to_dict()))) == toml_job


def _without(text: str, line: str) -> str:
    assert line in text
    return text.replace(line, "")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[job\n", r"job.toml: invalid TOML: .*\(at line 1, column \d+\)"),
        ("steps = []\n", r"job.toml: \[job\] table required"),
        (_without(GOOD, 'repo = "../repo"\n'), r"job.toml: job.repo: required"),
        (_without(GOOD, 'ref = "main"\n'), r"job.toml: job.ref: required"),
        (GOOD.replace('ref = "main"', 'ref = ""'), r"job.toml: job.ref: must not be empty"),
        (GOOD.replace('ref = "main"', "ref = 3"), r"job.toml: job.ref: must be a string, got integer 3"),
        (
            GOOD.replace('objective = "Add retry support"', 'objective = "  "'),
            r"job.toml: job.objective: must",
        ),
        (GOOD.replace('id = "job-1"', 'id = "a/b"'), r"job.toml: job.id: must match"),
        (
            GOOD.replace('runtime = ["agent", "--non-interactive"]', "runtime = []"),
            r"job.toml: job.runtime: must",
        ),
        (
            GOOD.replace('runtime = ["agent", "--non-interactive"]', 'runtime = "agent"'),
            r"job.runtime: must be a",
        ),
        (
            GOOD.replace('"--non-interactive"', '""'),
            r"job.toml: job.runtime\[1\]: must be a non-empty string",
        ),
        (
            _without(GOOD, 'runtime = ["agent", "--non-interactive"]\n'),
            r"job.toml: job.runtime: required: steps\[0\] \(id 'implement'\) has no runtime of its own",
        ),
        (GOOD.replace("[job.selfheal]", "[job.selfhael]"), r"job.toml: job.selfhael: unknown key"),
        (
            GOOD.replace("= 60", "= -60"),
            r"job.toml: job.selfheal.step_idle_timeout_seconds: must be > 0, got -60",
        ),
        (
            GOOD.replace("= 60", "= true"),
            r"job.toml: job.selfheal.step_idle_timeout_seconds: must be a number",
        ),
        (
            GOOD.replace("job_queue_max_retries = 0", "jobs_queue_max_retries = 0"),
            r"job.selfheal.jobs_queue_max",
        ),
        (
            GOOD.replace("[job]", "version = 1\n[job]"),
            r"job.toml: version: unknown key; expected one of: job",
        ),
        (GOOD.split("[[steps]]")[0], r"job.toml: steps: required: at least one \[\[steps\]\] table"),
        ("steps = []\n" + GOOD.split("[[steps]]")[0], r"job.toml: steps: must be a non-empty array"),
        (
            GOOD.replace("step_timeout_seconds = 30", "step_timeout_seconds = -1"),
            r"job.toml: steps\[1\] \(id 'build'\): step_timeout_seconds: must be > 0, got -1",
        ),
        (
            GOOD.replace("step_max_attempts = 5", 'step_max_attempts = "5"'),
            r"job.toml: steps\[1\] \(id 'build'\): step_max_attempts: must be an integer, got str '5'",
        ),
        (
            GOOD.replace('id = "build"', 'id = "implement"'),
            r"steps\[1\] \(id 'implement'\): id: duplicate of steps\[0\]",
        ),
        (GOOD.replace('id = "build"', 'id = ".."'), r"job.toml: steps\[1\]: id: must match"),
        (GOOD.replace('id = "build"', 'id = "../etc"'), r"job.toml: steps\[1\]: id: must match"),
        (GOOD.replace('id = "build"', 'id = "' + "x" * 129 + '"'), r"job.toml: steps\[1\]: id: must match"),
        (_without(GOOD, 'id = "build"\n'), r"job.toml: steps\[1\]: id: required"),
        (
            _without(GOOD, 'instructions = "Make it build."\n'),
            r"steps\[1\] \(id 'build'\): instructions: required",
        ),
        (
            GOOD.replace('title = "Implement', 'titel = "Implement'),
            r"steps\[0\] \(id 'implement'\): titel: unknown key",
        ),
        (
            GOOD.replace("step_max_attempts = 5", "job_self_heal_max_resets = 2"),
            r"\(id 'build'\): job_self_heal_max_resets: is a job-level budget; set it in \[job.selfheal\]",
        ),
        (
            GOOD.replace('runtime = ["make"]', "runtime = [1]"),
            r"steps\[1\] \(id 'build'\): runtime\[0\]: must be",
        ),
    ],
)
def test_bad_input_is_one_line_naming_file_and_key(text, message):
    with pytest.raises(InputError) as err:
        parse_job(text, source="job.toml")
    assert "\n" not in str(err.value)
    assert str(err.value).startswith("job.toml: ")
    assert re.search(message, str(err.value)), str(err.value)


def test_budget_errors_are_config_errors():
    with pytest.raises(ConfigError):
        parse_job(GOOD.replace("= 60", "= -60"), source="job.toml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", r"^x.json: invalid JSON: Expecting property name .*line 1 column 2"),
        ("[]", r"^x.json: must be a table/object at the top level, got array"),
        ('{"job": {}, "job": {}}', r"^x.json: invalid JSON: duplicate key 'job'"),
        ('{"job": 1}', r"^x.json: job: must be a table, got integer"),
    ],
)
def test_json_errors(text, message):
    with pytest.raises(InputError, match=message):
        parse_job(text, source="x.json")


def test_format_guess_and_explicit_format():
    doc = json.dumps({"job": {"objective": "o", "repo": "r", "ref": "m", "runtime": ["a"]}, "steps": [
        {"id": "s", "instructions": "i"}]})  # fmt: skip
    assert parse_job(doc, source="JOB.JSON").steps[0].id == "s"
    assert parse_job(doc, source="stdin", fmt="json").steps[0].id == "s"
    with pytest.raises(InputError, match="invalid TOML"):
        parse_job(doc, source="job.txt")
    with pytest.raises(InputError, match="unknown job file format 'yaml'"):
        parse_job(doc, source="job.yaml", fmt="yaml")


def test_too_many_steps():
    steps = [{"id": f"s{i}", "instructions": "i"} for i in range(MAX_STEPS + 1)]
    doc = json.dumps({"job": {"objective": "o", "repo": "r", "ref": "m", "runtime": ["a"]}, "steps": steps})
    with pytest.raises(InputError, match=r"steps: at most 10000 steps"):
        parse_job(doc, source="x.json")


# --- property tests --------------------------------------------------------------------------

_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30).filter(str.strip)
_ident = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,19}", fullmatch=True)
_runtime = st.lists(_text, min_size=1, max_size=3)
_step_overrides = st.fixed_dictionaries(
    {}, optional={"step_max_attempts": st.integers(1, 9), "step_timeout_seconds": st.floats(0.5, 1e4)}
)


@st.composite
def job_docs(draw):
    ids = draw(st.lists(_ident, min_size=1, max_size=5, unique=True))
    job_runtime = draw(st.none() | _runtime)
    steps = []
    for step_id in ids:
        step = {"id": step_id, "instructions": draw(_text)}
        if draw(st.booleans()):
            step["title"] = draw(_text)
        if job_runtime is None or draw(st.booleans()):
            step["runtime"] = draw(_runtime)
        step.update(draw(_step_overrides))
        steps.append(step)
    job = {"objective": draw(_text), "repo": draw(_text), "ref": draw(_text)}
    if job_runtime is not None:
        job["runtime"] = job_runtime
    if draw(st.booleans()):
        job["id"] = draw(_ident)
    job["selfheal"] = draw(
        st.fixed_dictionaries({}, optional={"job_self_heal_max_resets": st.integers(0, 3)})
    )
    return {"job": job, "steps": steps}


def _toml_value(value):
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string here
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def to_toml(doc) -> str:
    job = dict(doc["job"])
    selfheal = job.pop("selfheal")
    out = ["[job]", *(f"{k} = {_toml_value(v)}" for k, v in job.items()), "[job.selfheal]"]
    out += [f"{k} = {_toml_value(v)}" for k, v in selfheal.items()]
    for step in doc["steps"]:
        out += ["[[steps]]", *(f"{k} = {_toml_value(v)}" for k, v in step.items())]
    return "\n".join(out) + "\n"


@given(doc=job_docs())
def test_valid_documents_parse_the_same_from_toml_and_json(doc):
    job = parse_job(json.dumps(doc), source="j.json")
    assert parse_job(to_toml(doc), source="j.toml") == job
    assert JobSpec.from_dict(json.loads(json.dumps(job.to_dict()))) == job
    assert [s.id for s in job.steps] == [s["id"] for s in doc["steps"]]
    assert [s.index for s in job.steps] == list(range(len(doc["steps"])))
    for i, raw in enumerate(doc["steps"]):
        assert job.step_runtime(i) == tuple(raw.get("runtime") or doc["job"]["runtime"])
        assert job.steps[i].title == raw.get("title", raw["id"])
        assert set(job.steps[i].overrides) <= STEP_KEYS


@given(
    doc=job_docs(), where=st.sampled_from(["top", "job", "step"]), key=_ident.filter(lambda k: "." not in k)
)
def test_unknown_keys_never_pass_silently(doc, where, key):
    target = {"top": doc, "job": doc["job"], "step": doc["steps"][-1]}[where]
    if key in target or key in STEP_KEYS or (where == "job" and key == "selfheal"):
        return
    known = {"top": ("job", "steps"), "job": ("id", "objective", "repo", "ref", "runtime", "selfheal"),
             "step": ("id", "title", "instructions", "runtime")}[where]  # fmt: skip
    if key in known:
        return
    target[key] = 1
    with pytest.raises(InputError) as err:
        parse_job(json.dumps(doc), source="j.json")
    assert f"{key}: " in str(err.value)
    assert "unknown key" in str(err.value) or "job-level budget" in str(err.value)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@given(value=st.fixed_dictionaries({"job": _json_values, "steps": _json_values}) | _json_values)
def test_arbitrary_json_is_accepted_or_input_error(value):
    try:
        parse_job(json.dumps(value), source="j.json")
    except InputError as err:
        assert "\n" not in str(err) and str(err).startswith("j.json")


@given(text=st.text(max_size=200))
def test_arbitrary_text_is_accepted_or_input_error(text):
    try:
        parse_job(text, source="j.toml")
    except InputError as err:
        assert "\n" not in str(err)


@pytest.mark.parametrize(("text", "source"), [("[" * 100_000, "x.json"), ("a = " + "[" * 100_000, "x.toml")])
def test_deep_nesting_is_an_input_error(text, source):
    with pytest.raises(InputError, match=r"nested too deeply"):
        parse_job(text, source=source)
