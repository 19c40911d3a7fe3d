"""Loggers whose user-supplied values are safe to print: every argument of a log call (item ids, titles,
styles, URIs, error texts, whatever reached it from a catalog or a request) is shown with control
characters escaped (no forged log lines, no terminal escape sequences) and cut to a bounded length.
The format strings are ours and are left as they are.

Every module logs through :func:`get_logger`, so this holds in the driver, in Ray workers and in Serve
replicas alike, whatever logging configuration the process has."""

from __future__ import annotations

import logging
import re

MAX_ARG_CHARS = 500
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f\x80-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(value: object, limit: int = MAX_ARG_CHARS) -> str:
    """``value`` as one line of plain text: control, bidi and line-separator characters escaped
    (``\\n``, ``\\x1b``, ``\\u202e``), at most ``limit`` characters plus a note of how many were cut."""
    text = str(value)
    cut = len(text) - limit
    if cut > 0:
        text = text[:limit]
    text = _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
    return f"{text}… (+{cut} chars)" if cut > 0 else text


class SafeArgs(logging.Filter):
    """Rewrites a record's arguments with :func:`printable` (numbers are left alone)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_safe(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: _safe(arg) for key, arg in record.args.items()}
        return True


def _safe(arg: object) -> object:
    return arg if isinstance(arg, (int, float)) or arg is None else printable(arg)


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` with :class:`SafeArgs` on it."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, SafeArgs) for f in logger.filters):
        logger.addFilter(SafeArgs())
    return logger
