"""Bounding and neutralising text that came from outside: operators, runtimes, job files.

Pure functions. `one_line` makes a stored field safe and small (control characters, newlines and
ANSI escape sequences become visible or spaces, the length is capped); `terminal_safe` escapes what
is printed, so that text a runtime or an operator stored can never move the cursor, recolour, or
forge an extra line on an operator's terminal.
"""

from __future__ import annotations

import re
import unicodedata

#: longest control ``--reason`` stored (characters)
MAX_REASON = 500
#: how much of an offending key or value an error line shows
MAX_SHOWN = 100

# C0/C1 controls, DEL, and the Unicode line/paragraph separators and bidi overrides
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def shorten(text: str, limit: int = MAX_SHOWN) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was when cut."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def one_line(text: str, limit: int = MAX_REASON) -> str:
    """One printable line of at most ``limit`` characters: whitespace controls become spaces,
    other controls (ESC, NUL, bidi overrides) are dropped."""
    out = _CONTROL.sub(lambda m: " " if m.group() in "\t\n\r\x0b\x0c\u2028\u2029" else "", text)
    out = " ".join(out.split())
    return out if len(out) <= limit else out[:limit] + "..."


def terminal_safe(text: str) -> str:
    """``text`` with every control character but newline shown as an escape (``\\x1b``): what a
    stored string contains is visible, and it cannot act on the terminal."""

    def esc(m: re.Match[str]) -> str:
        ch = m.group()
        return ch if ch == "\n" else ch.encode("unicode_escape").decode("ascii")

    return _CONTROL.sub(esc, text)


def is_printable_name(text: str) -> bool:
    """True if ``text`` has no control or format characters (for identifiers)."""
    return not any(unicodedata.category(c) in ("Cc", "Cf") for c in text)
