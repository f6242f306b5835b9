"""chatd.memory ~~~ Bounded memory per request: what a body may cost parsed, and giving it back.

``max_request_bytes`` bounds a body's size, not what it becomes: parsed, every
JSON container is a Python object of ~72 bytes, so 4 MiB of ``[],[],...``
would be ~100 MiB of lists (measured: 24x its size; tiny messages 9x). Before
parsing, :func:`check_parse_cost` estimates the cost from a count of the
bytes that open containers and values (``bytes.count``, a few ms for 4 MiB)
and refuses, with 413, a body whose estimate is over ``MAX_COST_RATIO`` times
its size, unless that is under ``FREE_COST`` anyway. After a large request,
:func:`give_back` returns freed memory to the OS (glibc's ``malloc_trim``),
so one big body does not leave a worker big.
"""

from __future__ import annotations

import ctypes
import ctypes.util

from chatd.errors import TooComplex

# Measured growth when orjson parses each piece (see tests/test_hostile.py):
# a list or object with its slot in the parent ~72 bytes, a string ~72 per
# pair of quotes (so 36 a quote), a number with its slot ~40 (one per comma).
CONTAINER_COST = 72
QUOTE_COST = 36
COMMA_COST = 40
# A body may cost this many times its size parsed; the estimate errs high.
MAX_COST_RATIO = 10
# Below this, any body is parsed: its worst case is small whatever its shape.
FREE_COST = 16 << 20
# After a request whose body was at least this large, trim the heap.
TRIM_AFTER_BYTES = 1 << 20


def parse_cost(data: bytes) -> int:
    """Estimated bytes of Python objects ``data`` becomes once parsed (errs high)."""
    return (
        len(data)
        + CONTAINER_COST * (data.count(b"[") + data.count(b"{"))
        + QUOTE_COST * data.count(b'"')
        + COMMA_COST * data.count(b",")
    )


def check_parse_cost(data: bytes) -> None:
    """Refuse (413) a body that would cost more than MAX_COST_RATIO x its size parsed."""
    if len(data) * (1 + CONTAINER_COST) <= FREE_COST:
        return  # even a body of nothing but `[` cannot reach FREE_COST: skip the count
    cost = parse_cost(data)
    if cost > FREE_COST and cost > MAX_COST_RATIO * len(data):
        raise TooComplex(
            f"request body is too dense to parse: about {cost >> 20} MiB of objects "
            f"for {len(data)} bytes (at most {MAX_COST_RATIO}x its size); "
            "send fewer, larger values"
        )


def _malloc_trim():
    path = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(path).malloc_trim if path else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


MALLOC_TRIM = _malloc_trim()


def give_back() -> None:
    """Return the heap's free memory to the OS, where the C library can."""
    if MALLOC_TRIM is not None:
        MALLOC_TRIM(0)


def trim_after_large_body(_error=None) -> None:
    """A teardown_request hook: give memory back after a request with a large body."""
    from flask import request

    if (request.content_length or 0) >= TRIM_AFTER_BYTES:
        give_back()
