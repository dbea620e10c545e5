"""What the supervisor runs (`RuntimeSpec`), what it reports (`RuntimeResult`), how it reads
one output pipe (`OutputStream`) and when it asks whether to cancel on a push (`WakeCheck`): the
data side of `runtime.supervisor`."""

from __future__ import annotations

import codecs
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from celery_selfheal.core.model import Detector


class Wakeup(Protocol):
    """A descriptor that becomes readable when a cancel check is worth running now."""

    def fileno(self) -> int:
        """The descriptor to select on."""
        ...

    def drain(self) -> None:
        """Consume what made it readable."""
        ...


@dataclass(frozen=True)
class WakeCheck:
    """A cancel check that costs a store read: run at the start, whenever ``wakeup`` is readable
    (an operator's request was pushed), and every ``fallback`` seconds in case a push was lost."""

    check: Callable[[], bool]
    fallback: float
    wakeup: Wakeup | None = None


@dataclass(frozen=True)
class RuntimeSpec:
    """What to run for one attempt."""

    #: the runtime command (no shell)
    argv: Sequence[str]
    #: working directory (the workspace)
    cwd: Path
    #: full environment of the child; the caller builds it
    env: Mapping[str, str]
    #: the prompt, written to stdin which is then closed
    stdin_text: str
    #: seconds from start until the attempt is killed
    wall_timeout: float
    #: seconds without any stdout/stderr chunk until the attempt is killed
    idle_timeout: float
    #: seconds between SIGTERM and SIGKILL when ending the process group
    kill_grace: float = 5.0
    #: end the attempt when the same block of output lines occurs this many times in a row
    #: (detector OUTPUT_LOOP); 0 disables
    output_loop_limit: int = 0


@dataclass(frozen=True)
class RuntimeResult:
    """How an attempt's runtime ended."""

    #: exit status of the leader; None when a signal ended it
    exit_code: int | None
    #: signal that ended the leader (ours or foreign)
    signal: int | None
    #: EXIT (exited by itself, any code), SIGNAL (foreign signal), WALL_TIMEOUT or IDLE_TIMEOUT;
    #: on cancel, EXIT or SIGNAL as the leader ended, with ``cancelled`` set
    detector: Detector
    #: the attempt ended because ``cancel_check()`` returned True
    cancelled: bool
    #: pid of the leader, also the pgid of its group (0 if it never started)
    pid: int
    #: seconds from start until the end was detected (the kill phase is not included)
    wall_seconds: float
    #: seconds since the last output chunk when the end was detected
    idle_seconds: float
    #: the longest silence between start, output chunks and the end
    max_idle_seconds: float
    #: timeouts only: seconds between the threshold instant and its detection
    detection_lag: float | None
    #: bytes of output written to the log during the attempt
    output_bytes: int
    #: the last ~8 KiB of (redacted) output
    tail: str
    #: OUTPUT_LOOP only: what the supervisor saw (the repeated block, once; passed through
    #: ``redact_text``)
    note: str = ""


class OutputStream:
    """One output pipe: incremental UTF-8 decoding, then the optional stream redactor."""

    def __init__(self, fd: int, redactor: Any | None, tap: Callable[[str, int], object] | None) -> None:
        self.fd = fd
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._redactor = redactor
        self._tap = tap

    def text(self, data: bytes, *, final: bool = False) -> str:
        text = self._decoder.decode(data, final=final)
        if self._tap is not None and text:
            # the loop detector reads the decoded text before the redactor holds part of it back
            self._tap(text, self.fd)
        if self._redactor is None:
            return text
        out: str = self._redactor.feed(text) if text else ""
        if final:
            out += self._redactor.flush()
        return out
