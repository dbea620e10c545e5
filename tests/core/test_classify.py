from __future__ import annotations

import signal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from celery_selfheal.core.classify import FailureFacts, classify, default_classifier, marker_class
from celery_selfheal.core.model import Detector, FailureClass

T, S = FailureClass.TRANSIENT_RUNTIME, FailureClass.STUCK_NO_PROGRESS
C, P, R = (
    FailureClass.DETERMINISTIC_CONTRACT,
    FailureClass.DETERMINISTIC_POLICY,
    FailureClass.DETERMINISTIC_REPO,
)


def facts(exit_code=1, *, sig=None, detector=Detector.EXIT, tail=""):
    return FailureFacts(exit_code=exit_code, signal=sig, detector=detector, output_tail=tail)


@pytest.mark.parametrize(
    ("f", "expected"),
    [
        # detectors and signals: the runtime was cut off, its output is no verdict
        (facts(None, detector=Detector.WALL_TIMEOUT, tail="permission denied"), T),
        (facts(None, detector=Detector.IDLE_TIMEOUT, tail="merge conflict"), T),
        (facts(None, sig=signal.SIGKILL, detector=Detector.SIGNAL), T),
        (facts(None, detector=Detector.WORKER_LOST), T),
        (facts(-9, tail="schema validation failed"), T),
        (facts(1, detector=Detector.NO_PROGRESS), S),
        # sysexits beat output markers
        (facts(75, tail="permission denied"), T),
        (facts(65, tail="connection reset"), C),
        (facts(77, tail="timed out"), P),
        # markers, case-insensitive
        (facts(1, tail="CONFLICT (content): Merge conflict in a.py"), R),
        (facts(128, tail="fatal: not a git repository (or any of the parent directories): .git"), R),
        (facts(1, tail="remote: Authentication failed for 'https://x'"), P),
        (facts(1, tail="open /etc/shadow: Permission denied"), P),
        (facts(1, tail="no credentials found"), P),
        (facts(1, tail="HTTP 401 Unauthorized"), P),
        (facts(1, tail="403 Forbidden"), P),
        (facts(1, tail="status: 403"), P),
        (facts(1, tail="pydantic ValidationError: 2 validation errors"), C),
        (facts(1, tail="output does not match the schema"), C),
        (facts(1, tail="Schema validation failed at $.items"), C),
        (facts(1, tail="request TIMED OUT"), T),
        (facts(1, tail="ReadTimeout"), T),
        (facts(1, tail="ECONNRESET"), T),
        (facts(1, tail="Connection refused"), T),
        (facts(1, tail="HTTP 429 Too Many Requests"), T),
        (facts(1, tail="status=502"), T),
        (facts(1, tail="503 Service Unavailable"), T),
        (facts(1, tail="HTTP/1.1 504"), T),
        (facts(1, tail="rate limit exceeded"), T),
        (facts(1, tail="RateLimitError"), T),
        # nothing decisive: transient (no-progress catches repeats)
        (facts(1, tail="AssertionError: 1 != 2"), T),
        (facts(2, tail=""), T),
        (facts(None, tail=""), T),
    ],
)
def test_default_rules(f, expected):
    assert default_classifier(f) is expected
    assert classify(f) is expected


@pytest.mark.parametrize(
    ("tail", "expected"),
    [
        # the marker printed last wins
        ("connection reset by peer\nretrying...\nfatal: Authentication failed", P),
        ("Authentication failed\nretrying...\nconnection reset by peer", T),
        ("merge conflict in a.py\nrequest timed out", T),
        ("request timed out\nerror: merge conflict", R),
        ("validation error: connection timed out", T),
        ("nothing to see here", None),
    ],
)
def test_latest_marker_wins(tail, expected):
    assert marker_class(tail) is expected


def test_extra_classifiers_run_first_in_order():
    calls = []

    def no_opinion(f):
        calls.append("no_opinion")
        return None

    def flaky_harness(f):
        calls.append("flaky")
        return "deterministic_repo" if "pytest-xdist" in f.output_tail else None

    f = facts(1, tail="pytest-xdist crashed; connection reset")
    assert classify(f, [no_opinion, flaky_harness]) is R
    assert calls == ["no_opinion", "flaky"]
    assert classify(facts(1, tail="connection reset"), [no_opinion, flaky_harness]) is T
    with pytest.raises(ValueError):
        classify(f, [lambda f: "not-a-class"])  # type: ignore[list-item]


@given(
    exit_code=st.none() | st.integers(-64, 255),
    sig=st.none() | st.integers(1, 64),
    detector=st.sampled_from(Detector),
    tail=st.text(max_size=300),
)
def test_total_and_safe(exit_code, sig, detector, tail):
    """Every input gets a class; a cut-off runtime is never deterministic."""
    cls = classify(FailureFacts(exit_code, sig, detector, tail))
    assert isinstance(cls, FailureClass)
    cut_off = (Detector.WALL_TIMEOUT, Detector.IDLE_TIMEOUT, Detector.SIGNAL, Detector.WORKER_LOST)
    if detector in cut_off or sig is not None:
        assert cls.retryable
    if detector in cut_off:
        assert cls is T


def test_classification_reason_names_what_decided() -> None:
    from celery_selfheal.core.classify import classification_reason

    def facts(code: int | None, tail: str, det: Detector = Detector.EXIT) -> FailureFacts:
        return FailureFacts(exit_code=code, signal=None, detector=det, output_tail=tail)

    assert classification_reason(facts(77, "x"), FailureClass.DETERMINISTIC_POLICY) == "exit code 77 (EX_NOPERM)"
    why = classification_reason(facts(1, "boom\nfatal: Not a git repository (or any parent)\n"),
                                FailureClass.DETERMINISTIC_REPO)
    assert why == "output marker 'Not a git repository'"
    assert classification_reason(facts(1, "hm"), FailureClass.DETERMINISTIC_CONTRACT) == \
        "classified deterministic_contract by a plugin classifier"
    assert classification_reason(facts(None, "", Detector.OUTPUT_LOOP), FailureClass.STUCK_NO_PROGRESS) == \
        "detector output_loop"
    assert classify(facts(None, "", Detector.OUTPUT_LOOP)) is FailureClass.STUCK_NO_PROGRESS
