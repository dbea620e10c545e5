"""Output-loop detection (detector ``output_loop``): the same block of lines, over and over.

An agent that repeats the same tool call and gets the same error every few seconds looks busy to
the idle watchdog; only the wall clock would end it. :class:`OutputLoopDetector` is fed the
runtime's output as it arrives and reports a block of 1..``max_period`` lines that occurred
``limit`` times in a row, counting its first occurrence (A/B alternation is a 2-line block).

Lines are compared by :func:`loop_key`: the volatile tokens of failure signatures (addresses,
uuids, timestamps, durations, temp paths, pids) become placeholders, everything else stays. Plain
numbers are *not* replaced, unlike in a failure signature: a counter, a percentage or a byte count
that advances makes every line different, which is progress, and so does a test runner that names
a different test on each line. Source locations stay too: within one attempt the same error has
the same line numbers, while "line 1", "line 2" are progress.

How it stays cheap: for each period ``p`` a counter holds how many lines in a row equalled the
line ``p`` before them; a block repeated ``limit`` times is ``p * (limit - 1)`` such lines, so
each line costs O(max_period) and memory is O(max_period). Normalizing is the expensive part
(regular expressions, tens of microseconds a line), so the detector works under a CPU budget:
when output arrives faster than ``cpu_share`` of the elapsed time can normalize, it skips whole
chunks and then examines at least one full detection window (``max_period * (limit + 1)``
consecutive lines) before it may skip again. A loop that floods the output is then found within
about ``window cost / cpu_share`` seconds instead of within ``limit`` repetitions; a loop at an
agent's pace (a few lines a second) is always examined line by line.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from celery_selfheal.core.signature import BRACKET_PID_RULE, HASH_RULE, NUMBER_RULE, RULES

#: the rules of failure signatures adapted to "same line within one attempt" (see module doc)
LOOP_RULES: tuple[tuple[str, str], ...] = tuple(
    # a pid in brackets only after a process name ("sshd[812]"), not a "[3]" counter
    (r"(?<=[a-z_)])\[\d+\]", "[<pid>]") if rule == BRACKET_PID_RULE
    # hashes and hex ids need a letter too, so that a 7-digit byte count stays a number
    else (r"(?<!\d\.)\b(?=[0-9]*[a-f])(?=[a-f]*\d)[0-9a-f]{7,}\b(?!\.\d)", "<hex>") if rule == HASH_RULE
    else rule
    for rule in RULES
    if rule != NUMBER_RULE and rule[1] not in (":<loc>", "line <loc>")
)
_COMPILED = tuple((re.compile(p, re.IGNORECASE), r) for p, r in LOOP_RULES)
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-_]")
# every rule needs a digit, except temp paths: a line with neither needs no rule at all
_NEEDS_RULES = re.compile(r"\d|/tmp|/var/|/private/")
#: characters of a line that take part in the comparison (and in the quoted block)
MAX_LINE_CHARS = 1000


def clean_line(line: str) -> str:
    """A line as a terminal shows it: escapes removed, a carriage return overwrites the line."""
    if "\x1b" in line:
        line = _ANSI.sub("", line)
    return line.rsplit("\r", 1)[-1].rstrip()


def loop_key(line: str) -> str:
    """The comparison key of a (cleaned) line: volatile tokens replaced, lowercased, whitespace
    collapsed."""
    if _NEEDS_RULES.search(line):
        for pattern, replacement in _COMPILED:
            line = pattern.sub(replacement, line)
    return " ".join(line.lower().split())


@dataclass(frozen=True)
class LoopMatch:
    """A block of lines that occurred ``repetitions`` times in a row."""

    #: the block, one occurrence, as printed (cleaned, each line cut at MAX_LINE_CHARS)
    block: tuple[str, ...]
    #: lines in the block
    period: int
    #: how many times in a row it occurred (counting the first), = the detector's limit
    repetitions: int
    #: one-based number (among the lines examined) of the block's first line, first occurrence
    first_line: int


class OutputLoopDetector:
    """Fed output chunks (:meth:`feed`), reports the first :class:`LoopMatch`, then stays matched."""

    def __init__(self, limit: int, *, max_period: int = 16, cpu_share: float = 0.03,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        if limit == 1 or limit < 0 or max_period < 1:
            raise ValueError("limit must be 0 (off) or >= 2 and max_period >= 1")
        self.limit, self.max_period, self.cpu_share, self.clock = limit, max_period, cpu_share, clock
        #: lines examined so far; lines skipped under the CPU budget
        self.lines_seen = 0
        self.lines_skipped = 0
        self.match: LoopMatch | None = None
        self._window = max_period * (limit + 1)
        self._pending: dict[int, str] = {}
        self._credit = self._burst = 0.02
        self._last = clock()
        self._committed = self._window
        self._gap = False
        self._resync()

    def _resync(self) -> None:
        """Forget the recent lines (after a gap in what was examined, runs cannot continue)."""
        self._keys: deque[str] = deque(maxlen=self.max_period)
        self._lines: deque[str] = deque(maxlen=self.max_period)
        self._runs = [0] * (self.max_period + 1)

    def feed(self, text: str, stream: int = 0) -> LoopMatch | None:
        """Add a chunk of ``stream``'s output (streams keep their own partial last line)."""
        if self.limit == 0 or self.match is not None or not text:
            return self.match
        now = self.clock()
        self._credit = min(self._burst, self._credit + (now - self._last) * self.cpu_share)
        self._last = now
        if self._committed <= 0 and self._credit <= 0:
            self._skip(text, stream)
            return None
        if self._gap:  # examining again after a gap: a whole window, whatever it costs
            self._gap = False
            self._resync()
            self._committed = self._window
        parts = (self._pending.get(stream, "") + text).split("\n")
        self._pending[stream] = parts.pop()[:MAX_LINE_CHARS * 4]
        for i, line in enumerate(parts):
            if self._line(line):
                break
            if self._committed <= 0 and i % 16 == 15 and self._credit <= self.clock() - now:
                # over budget within a big chunk: skip its other lines (a gap, as in _skip)
                self.lines_skipped += len(parts) - i - 1
                self._gap = True
                break
        self._credit -= self.clock() - now
        return self.match

    def _skip(self, text: str, stream: int) -> None:
        cut = text.rfind("\n")
        if cut < 0:
            self._pending[stream] = (self._pending.get(stream, "") + text)[:MAX_LINE_CHARS * 4]
            return
        self.lines_skipped += text.count("\n")
        self._pending[stream] = text[cut + 1:][:MAX_LINE_CHARS * 4]
        self._gap = True

    def _line(self, raw: str) -> bool:
        line = clean_line(raw[:MAX_LINE_CHARS * 4])[:MAX_LINE_CHARS]
        key = loop_key(line)
        if not key:  # blank lines separate nothing: "A, blank, A" is A twice
            return False
        self.lines_seen += 1
        self._committed -= 1
        keys, runs = self._keys, self._runs
        n = len(keys)
        found = 0
        for p in range(1, self.max_period + 1):
            if p <= n and keys[n - p] == key:
                runs[p] += 1
                if not found and runs[p] >= p * (self.limit - 1):
                    found = p
            else:
                runs[p] = 0
        keys.append(key)
        self._lines.append(line)
        if found:
            block = tuple(self._lines)[-found:]
            self.match = LoopMatch(block=block, period=found, repetitions=self.limit,
                                   first_line=self.lines_seen - found * self.limit + 1)
        return bool(found)


def describe_loop(match: LoopMatch, *, max_chars: int = 1500) -> str:
    """The failure summary of an output loop: what repeated, how often, and the block once."""
    what = "line" if match.period == 1 else f"{match.period}-line block"
    head = (f"output loop: the same {what} was printed {match.repetitions} times in a row "
            f"(from output line {match.first_line}); it reads:")
    body = "\n".join(match.block)
    if len(body) > max_chars:
        body = body[:max_chars] + "\n[... block truncated ...]"
    return f"{head}\n{body}"
