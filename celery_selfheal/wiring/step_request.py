"""The step task's Celery request: on RabbitMQ, a step longer than the server's ``consumer_timeout``
is acknowledged when its attempt starts (``Task.Request``, Celery's hook for custom requests).

With ``acks_late`` such a step would hold its delivery unacknowledged past the timeout: RabbitMQ then
closes the worker's channel and Celery's worker stops ("Unrecoverable error: PreconditionFailed").
Acknowledged early, the step is guarded by its attempt lease instead: a worker that dies mid-step
stops renewing it, and the sweeper of another worker records the lost attempt and re-sends the step
(`wiring.recovery`). The decision is `cluster_checks.acks_at_start`; every other step keeps
``acks_late`` (and ``reject_on_worker_lost``). Celery's later ``acknowledge``/``reject`` calls are
no-ops on an acknowledged request.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.worker.request import Request

from celery_selfheal.cluster.checks import acks_at_start, cluster_options

log = logging.getLogger(__name__)


class StepRequest(Request):
    """A request that acknowledges a long step on RabbitMQ as soon as a pool process accepts it."""

    def on_accepted(self, pid: int, time_accepted: float) -> None:
        super().on_accepted(pid, time_accepted)
        if self.acknowledged or not self.task.acks_late:
            return
        app = self.task.app
        settings = getattr(getattr(app, "selfheal", None), "settings", None)
        worker_table: Any = getattr(settings, "worker", {})
        hard, _ = self.time_limits
        if acks_at_start(str(app.conf.broker_url or ""), hard, cluster_options(worker_table)):
            log.info("celery-selfheal: step message %s acknowledged at start (hard limit %ss is not below "
                     "the RabbitMQ consumer_timeout); its attempt lease guards it", self.id, hard)
            self.acknowledge()
