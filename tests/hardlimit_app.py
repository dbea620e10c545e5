"""Worker app for the hard-time-limit test: the ready app plus a task that behaves like a step task
whose own code hangs (it ignores the soft limit), so Celery's hard limit SIGKILLs the pool child
while a runtime group with a grandchild is running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from celery_selfheal.app import app, selfheal
from celery_selfheal.core.job_state import JobState
from celery_selfheal.events.bus import utc_now_iso
from celery_selfheal.jobs.records import spec_of
from celery_selfheal.runtime.capped_log import CappedLog
from celery_selfheal.runtime.process_group import start_group_child_preexec
from celery_selfheal.runtime.supervisor import RuntimeSpec, run_runtime
from celery_selfheal.steps.running import RunningAttempts
from celery_selfheal.steps.workspace import prepare_workspace

HANG = "tests.hang_past_hard_limit"


@app.task(bind=True, name=HANG, soft_time_limit=1, time_limit=2, ignore_result=True, shared=False)
def hang_past_hard_limit(self: Any, job_id: str, pidfile: str) -> None:
    """Start attempt 1 of step 0 as the engine does, then hang in "our" code past the hard limit."""
    ctx = selfheal.context()
    job = ctx.store.get_job(job_id)
    assert job is not None
    ctx.store.update_job(job_id, {"status": "running"})
    ws = prepare_workspace(ctx, JobState.from_record(job), 0, "initial")
    step = spec_of(job).steps[0]
    ctx.store.put_attempt(job_id, 0, 1, {"jobId": job_id, "stepId": step.id, "stepIndex": 0, "attempt": 1,
                                         "round": 0, "epoch": 0, "status": "running",
                                         "attemptStrategy": "initial", "taskId": self.request.id,
                                         "startedAt": utc_now_iso()})
    script = (f"import subprocess,sys,time; p=subprocess.Popen([sys.executable,'-c',"
              f"'import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)']); "
              f"open({pidfile!r},'w').write(str(p.pid)); time.sleep(600)")
    runtime = subprocess.Popen([sys.executable, "-c", script], cwd=ws.path, start_new_session=True,
                               preexec_fn=start_group_child_preexec)
    RunningAttempts(ctx.settings.run_dir).register(self.request.id, {
        "jobId": job_id, "stepId": step.id, "stepIndex": 0, "attempt": 1, "epoch": 0, "pgid": runtime.pid})
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # the soft limit is swallowed: only the hard limit ends us
    time.sleep(60)


HANG_GUARDED = "tests.hang_with_daemons_past_hard_limit"
DAEMONIZE = str(Path(__file__).resolve().parent / "runtimes" / "daemonize.py")


@app.task(bind=True, name=HANG_GUARDED, soft_time_limit=1, time_limit=2, ignore_result=True, shared=False)
def hang_with_daemons_past_hard_limit(self: Any, pidfile: str, workdir: str) -> None:
    """Run a runtime that leaves setsid/double-forked daemons through the real supervisor (in a
    thread), then hang in "our" code until Celery's hard limit SIGKILLs this pool child."""
    spec = RuntimeSpec(argv=[sys.executable, DAEMONIZE, pidfile, "0", "--stay", "600"], cwd=Path(workdir),
                       env=dict(os.environ), stdin_text="", wall_timeout=600, idle_timeout=600, kill_grace=0.5)

    def supervise() -> None:
        with CappedLog(Path(workdir) / "guarded.log") as log:
            run_runtime(spec, log=log)

    threading.Thread(target=supervise, daemon=True).start()
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # only the hard limit ends us
    time.sleep(60)
