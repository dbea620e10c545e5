"""The console in a real headless Chromium against a real server and a real prefork worker: log in,
watch a job heal live, pause (pending, then the worker's ack), resume_from_step on a finished job, a
rejected action shown as an error, and hostile titles/objective/output staying text."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from celery_selfheal.api import submit
from tests.web.browser import until
from tests.web.conftest import ALICE, Console, run_console, write_job

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def by_css(driver: Any, selector: str) -> list[Any]:
    return list(driver.find_elements("css selector", selector))


def _fresh(read: Callable[[], Any]) -> Any:
    """``read()`` of the page as it is now: the live console re-renders parts of it as the job
    changes, so an element found a moment before may be gone; such a read is done again."""
    from selenium.common.exceptions import StaleElementReferenceException

    for _ in range(50):
        try:
            return read()
        except StaleElementReferenceException:
            continue
    return read()


def text_of(driver: Any, selector: str) -> str:
    def read() -> str:
        found = by_css(driver, selector)
        return str(found[0].text) if found else ""
    return str(_fresh(read))


def all_disabled(driver: Any, *actions: str) -> bool:
    """Every one of these action buttons disabled (looked up afresh: the page re-renders them as
    the job changes, so an element found a moment ago may be gone; `until` retries then)."""
    return all(driver.find_element("id", f"action-{a}").get_attribute("disabled") is not None for a in actions)


def login(driver: Any, console: Console, name: str = ALICE) -> None:
    """The printed-URL way (GET /login?token=T), as Jupyter does."""
    driver.get(f"{console.url}/login?token={console.token(name)}")
    until(driver, lambda d: d.current_url.rstrip("/") == console.url, "the redirect to the job list")


def event_names(driver: Any) -> list[str]:
    return list(_fresh(lambda: [li.get_attribute("data-event") for li in by_css(driver, "#events li.event")]))


def test_login_form_and_job_list(browser: Any, harness: Any, make_repo) -> None:
    job_id = harness.submit(write_job(harness.tmp, make_repo(), [{"id": "a", "instructions": "print hi"}],
                                      objective="list me"))
    with run_console(harness.selfheal) as console:
        browser.get(f"{console.url}/jobs/{job_id}")
        until(browser, lambda d: "/login" in d.current_url, "the login page")
        browser.find_element("id", "token").send_keys("wrong-token-0123456789")
        browser.find_element("id", "login").click()
        until(browser, lambda d: "not valid" in text_of(d, "#login-error"), "the login error")
        browser.find_element("id", "token").send_keys(console.token())
        browser.find_element("id", "login").click()
        until(browser, lambda d: by_css(d, f'tr[data-job-id="{job_id}"]'), "the job in the list")
        assert "list me" in text_of(browser, f'tr[data-job-id="{job_id}"]')
        until(browser, lambda d: "succeeded" in text_of(d, f'tr[data-job-id="{job_id}"]'), "live status in the list")
        cookie = browser.get_cookie("selfheal_session")
        assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
        assert browser.execute_script("return document.cookie") == ""  # HttpOnly: not readable by scripts
        browser.find_element("css selector", f'tr[data-job-id="{job_id}"] a').click()
        until(browser, lambda d: text_of(d, "#job-status") == "succeeded", "the job page")


def test_job_heals_live_without_reload(browser: Any, harness: Any, make_repo) -> None:
    job_file = write_job(harness.tmp, make_repo(), [
        {"id": "warmup", "title": "Warm up", "instructions": "sleep 2\nwrite a.txt: a",
         "step_idle_timeout_seconds": 30},
        {"id": "implement", "title": "Implement the change", "instructions": "silent@1\nwrite out.txt: done"}],
        step_idle_timeout_seconds=1.0, soft_reset_backoff_seconds=0.1)
    with run_console(harness.selfheal) as console:
        login(browser, console)
        job_id = submit(harness.selfheal, job_file)["jobId"]
        browser.get(f"{console.url}/jobs/{job_id}")
        until(browser, lambda d: text_of(d, "#job-status"), "the job page")
        assert "task.self_heal.triggered" not in event_names(browser)
        browser.execute_script("window.__sameDocument = true")
        until(browser, lambda d: "task.self_heal.triggered" in event_names(d), "the soft reset in the live feed")
        until(browser, lambda d: "task.job.succeeded" in event_names(d), "the job's end in the feed", timeout=60)
        until(browser, lambda d: text_of(d, "#job-status") == "succeeded", "the status to follow")
        assert browser.execute_script("return window.__sameDocument") is True  # no reload happened
        cells = text_of(browser, '.step[data-step-index="1"] tr.attempt')
        assert "idle_timeout" in cells and "transient_runtime" in cells and "soft_reset" in cells
        assert "thinking" in text_of(browser, '.step[data-step-index="1"] .att-summary')  # scrubbed summary
        until(browser, lambda d: "(succeeded)" in text_of(d, "#log-title") and by_css(d, "#artifacts li"),
              "the last attempt's log and the artifacts")
        shot = harness.tmp / "console-job.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        if os.environ.get("SELFHEAL_WRITE_SCREENSHOT") == "1":
            shutil.copy(shot, ROOT / "docs" / "console-job.png")


def test_pause_shows_pending_then_the_ack(browser: Any, harness: Any, make_repo) -> None:
    # Both worker slots busy: the pause request waits (pending) until job A's step ends, which is
    # when the test opens the gate (however slow the browser is on a busy machine).
    gate = harness.tmp / f"gate-{uuid.uuid4().hex[:8]}"
    a = harness.submit(write_job(harness.tmp, make_repo("a"), [
        {"id": "first", "instructions": f"wait-for {gate}\nwrite one.txt: 1"},
        {"id": "second", "instructions": "print 2"}]))
    b = harness.submit(write_job(harness.tmp, make_repo("b"), [{"id": "only", "instructions": f"wait-for {gate}"}]))
    with run_console(harness.selfheal) as console:
        login(browser, console)
        browser.get(f"{console.url}/jobs/{a}")
        until(browser, lambda d: by_css(d, ".step tr.attempt.running"), "step 0 running on the page")
        until(browser, lambda d: any(x["status"] == "running" for x in harness.attempts(b)), "job B to hold a slot")
        assert browser.find_element("id", "action-resume").get_attribute("disabled") is not None
        browser.find_element("id", "reason").send_keys("check step one")
        browser.find_element("id", "action-pause").click()
        until(browser, lambda d: "pause requested" in text_of(d, "#control-msg"), "the accepted request")
        until(browser, lambda d: by_css(d, "#pending li.pending-request"), "the pending request on the page")
        gate.touch()
        until(browser, lambda d: "task.control.recovery.ack" in event_names(d), "the worker's ack", timeout=60)
        until(browser, lambda d: not by_css(d, "#pending li.pending-request"), "pending cleared after the ack")
        until(browser, lambda d: text_of(d, "#job-status") == "paused", "the job parked")
        assert "acknowledged" in text_of(browser, "#audit") and "check step one" in text_of(browser, "#audit")
        until(browser, lambda d: d.find_element("id", "action-resume").get_attribute("disabled") is None,
              "resume enabled once paused")
        until(browser, lambda d: all_disabled(d, "pause"), "pause disabled while paused")
        browser.find_element("id", "action-resume").click()
        until(browser, lambda d: text_of(d, "#job-status") == "succeeded", "the job to finish", timeout=60)


def test_resume_from_step_on_a_finished_job_and_a_rejection(browser: Any, harness: Any, make_repo) -> None:
    job_id = harness.submit(write_job(harness.tmp, make_repo(), [
        {"id": "one", "instructions": "write one.txt: 1"}, {"id": "two", "instructions": "write two.txt: 2"}]))
    harness.wait(job_id)
    with run_console(harness.selfheal) as console:
        login(browser, console)
        browser.get(f"{console.url}/jobs/{job_id}")
        until(browser, lambda d: text_of(d, "#job-status") == "succeeded", "the finished job")
        until(browser, lambda d: by_css(d, "#action-pause"), "the buttons")
        until(browser, lambda d: all_disabled(d, "pause", "resume", "takeover", "cancel"),
              "pause, resume, takeover and cancel disabled on a finished job")
        browser.find_element("id", "action-resume_from_step").click()  # no step chosen: the server refuses
        until(browser, lambda d: "rejected" in text_of(d, "#control-msg"), "the rejection")
        assert "needs a step" in text_of(browser, "#control-msg")
        assert "error" in browser.find_element("id", "control-msg").get_attribute("class")
        until(browser, lambda d: "rejected" in text_of(d, "#audit"), "the rejection in the audit trail")
        from selenium.webdriver.support.ui import Select

        Select(browser.find_element("id", "step")).select_by_value("two")
        browser.find_element("id", "action-resume_from_step").click()
        until(browser, lambda d: "task.resume.from_step" in event_names(d), "the rerun in the live feed")
        until(browser, lambda d: event_names(d).count("task.job.succeeded") == 2, "the second success", timeout=60)
    assert harness.ctx.store.get_job(job_id)["epoch"] == 1


XSS_TITLE = '<script>window.__xss = "title"</script><img src=x onerror="window.__xss=\'img\'">'
XSS_OBJECTIVE = '<img src=x onerror="window.__xss=\'objective\'"><b id="pwn-objective">bold</b>'
XSS_OUTPUT = '<img src=x onerror="window.__xss=\'output\'"><b id="pwn-output">out</b>'


def test_hostile_job_text_and_output_stay_text(browser: Any, harness: Any, make_repo) -> None:
    job_file = write_job(harness.tmp, make_repo(), [
        {"id": "evil", "title": XSS_TITLE, "instructions": f"print {XSS_OUTPUT}\nsleep 2\nfail 65 {XSS_OUTPUT}"}],
        objective=XSS_OBJECTIVE)
    with run_console(harness.selfheal) as console:
        login(browser, console)
        job_id = submit(harness.selfheal, job_file)["jobId"]
        browser.get(f"{console.url}/jobs/{job_id}")
        until(browser, lambda d: "pwn-output" in text_of(d, "#log"), "the hostile output in the log tail")
        until(browser, lambda d: text_of(d, "#job-status") == "failed", "the job to fail", timeout=60)
        until(browser, lambda d: "pwn-output" in text_of(d, ".att-summary"), "the hostile failure summary")
        assert XSS_OBJECTIVE in text_of(browser, "#objective")
        assert XSS_TITLE in text_of(browser, ".step-title")
        assert not by_css(browser, "#pwn-objective, #pwn-output, .step img, #objective img, #log b")
        assert browser.execute_script("return window.__xss") is None
        browser.get(f"{console.url}/")
        until(browser, lambda d: by_css(d, f'tr[data-job-id="{job_id}"]'), "the job in the list")
        assert XSS_OBJECTIVE in text_of(browser, f'tr[data-job-id="{job_id}"]')
        assert not by_css(browser, "#pwn-objective") and browser.execute_script("return window.__xss") is None


def test_cancel_asks_for_confirmation(browser: Any, harness: Any, make_repo) -> None:
    job_id = harness.submit(write_job(harness.tmp, make_repo(), [{"id": "long", "instructions": "sleep 30"}],
                                      kill_grace_seconds=0.5))
    with run_console(harness.selfheal) as console:
        login(browser, console)
        browser.get(f"{console.url}/jobs/{job_id}")
        until(browser, lambda d: by_css(d, ".step tr.attempt.running"), "the step running on the page")
        browser.find_element("id", "action-cancel").click()
        until(browser, lambda d: d.switch_to.alert, "the confirmation").dismiss()
        assert not harness.ctx.store.list_control(job_id)  # dismissed: nothing was asked
        browser.find_element("id", "action-cancel").click()
        until(browser, lambda d: d.switch_to.alert, "the confirmation").accept()
        until(browser, lambda d: text_of(d, "#job-status") == "cancelled", "the job cancelled", timeout=60)
        until(browser, lambda d: "task.job.cancelled" in event_names(d), "the cancel in the feed")
        until(browser, lambda d: all_disabled(d, "pause", "cancel", "retry_step", "resume_from_step"),
              "pause, cancel, retry_step and resume_from_step disabled on a cancelled job")
