"""Limits a job file must meet before and right after it is parsed (pure, no I/O).

A parser is not a safe place to find out a file is hostile: tomllib spends quadratic time and
memory on a long dotted key (``a.a.a…=1``, 200 KB ran a worker out of memory), and JSON nesting
recurses. So the text is checked first (size, dotted-key depth), and the parsed document next
(nesting depth, number of keys and items); each failure is one line naming the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery_selfheal.errors import InputError

#: largest job file read (bytes of UTF-8 text)
MAX_JOB_FILE_BYTES = 4 * 1024 * 1024
#: most dots in one TOML key or table header (``a.b.c`` has 2)
MAX_KEY_DOTS = 64
#: deepest nesting of tables/arrays in a parsed job file
MAX_DEPTH = 32
#: most keys plus array items in a parsed job file
MAX_NODES = 200_000


def check_text(text: str, *, source: str, fmt: str) -> None:
    """InputError if the raw text is too big, or (TOML) holds a key too deeply dotted."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_JOB_FILE_BYTES:
        raise InputError(f"job file too large: {size} bytes, at most {MAX_JOB_FILE_BYTES}", where=source)
    if fmt != "toml":
        return
    in_multiline = False
    for number, line in enumerate(text.splitlines(), 1):
        quotes = line.count('"""') + line.count("'''")
        if not in_multiline:
            head = line.lstrip()
            key = head if head.startswith("[") else head.split("=", 1)[0] if "=" in head else ""
            if key.count(".") > MAX_KEY_DOTS:
                raise InputError(f"line {number}: key nested too deeply (more than {MAX_KEY_DOTS} dotted "
                                 f"parts): {key[:100]!r}...", where=source)
        if quotes % 2:
            in_multiline = not in_multiline


def check_shape(doc: Any, *, source: str) -> None:
    """InputError if the parsed document nests deeper than `MAX_DEPTH` or has more than `MAX_NODES`."""
    nodes = 0
    stack: list[tuple[Any, int]] = [(doc, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise InputError(f"nested more than {MAX_DEPTH} levels deep", where=source)
        if isinstance(value, Mapping):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        nodes += len(children)
        if nodes > MAX_NODES:
            raise InputError(f"more than {MAX_NODES} keys and items", where=source)
        stack.extend((child, depth + 1) for child in children)
