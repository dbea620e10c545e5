"""The JSON text of the records this process last read or wrote: the first guess of a compare-and-set.

A compare-and-set (`_redis_writes`) needs the current text of the value it replaces. A worker that
drives a job writes it several times in a row; reading it back before each write costs a round trip
to Redis that, on a busy machine, costs more than the work itself. So the Redis store remembers the
text of each job and attempt it read or wrote and sends the script with that guess at once. The
script still compares the stored text exactly: a stale guess changes nothing and is answered by a
fresh read and a second try, so a guess is never trusted for a decision (a guard that fails on a
guessed record is checked again on a fresh read). Bounded; per process (cleared after a fork).
"""

from __future__ import annotations

import os

#: values remembered at most (a worker process touches a few jobs at a time)
MAX_SEEN = 256


class Seen:
    """(key, hash field or '') -> JSON text, of this process only."""

    def __init__(self) -> None:
        self._texts: dict[tuple[str, str], str] = {}
        self._pid = os.getpid()

    def _own(self) -> dict[tuple[str, str], str]:
        if self._pid != os.getpid():  # inherited through fork(): the parent's guesses are not ours
            self._texts, self._pid = {}, os.getpid()
        return self._texts

    def get(self, key: str, field: str = "") -> str | None:
        """The text last seen for the value, or None."""
        return self._own().get((key, field))

    def put(self, key: str, field: str, text: str | None) -> None:
        """Remember (or, with None, forget) the value's text."""
        texts = self._own()
        if text is None:
            texts.pop((key, field), None)
            return
        if len(texts) >= MAX_SEEN and (key, field) not in texts:
            texts.pop(next(iter(texts)))  # the oldest: insertion order
        texts[(key, field)] = text
