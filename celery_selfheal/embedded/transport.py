"""The embedded broker: kombu's ``filesystem://`` transport with atomic message files.

kombu's filesystem channel creates a message file under its final ``.msg`` name and only then writes
it, so a consumer polling at that instant can move and read an empty file and the message is lost
(kombu#1551); a new exchange table file has the same window. Here a message is written under a
hidden temporary name and renamed into place (readers only see complete files), and an empty table
read is retried until the writer's content lands. Selected with ``broker_transport`` while the URL
stays ``filesystem://``.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

TRANSPORT = "celery_selfheal.embedded.transport:Transport"
_TABLE_RETRIES = 50


class Channel(filesystem.Channel):
    """A filesystem channel whose writes are atomic renames."""

    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        name = f"{round(time.monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        tmp = os.path.join(self.data_folder_out, f".{name}.tmp")  # never matches a queue's pattern
        try:
            with open(tmp, "wb") as fh:
                fh.write(str_to_bytes(dumps(payload)))
            os.replace(tmp, final)
        except OSError as exc:
            raise filesystem.ChannelError(f"Cannot add file {final!r} to directory") from exc

    def get_table(self, exchange: str) -> Any:
        for _ in range(_TABLE_RETRIES):
            try:
                return super().get_table(exchange)
            except ValueError:  # the table file exists but its creator has not written it yet
                time.sleep(0.005)
        return super().get_table(exchange)


#: longest a worker's consume loop waits in one drain; Celery's sync loop asks for 2 s and only
#: checks for shutdown between drains, which made every worker stop take seconds
_MAX_DRAIN = 0.2


class Transport(filesystem.Transport):
    """``filesystem://`` with `Channel`, and drains short enough for a prompt worker shutdown."""

    Channel = Channel

    def drain_events(self, connection: Any, timeout: float | None = None) -> Any:  # type: ignore[override]
        return super().drain_events(connection, timeout=_MAX_DRAIN if timeout is None else min(timeout, _MAX_DRAIN))
