"""Identifiers: UUID version 7, time-ordered and monotonic within the process.

Row ids are UUIDv7 (RFC 9562 §5.7): a 48-bit Unix timestamp in milliseconds, then the
version, 12 bits of ``rand_a``, the variant and 62 random bits. Ids made later sort later,
so B-tree indexes stay append-mostly and ``ORDER BY id`` is creation order, while 62 bits
drawn from ``os.urandom`` for every id (never a buffered or seeded PRNG, which a forked
process would replay) keep them unguessable and unique across processes and machines.

Within one process ids are strictly increasing even inside one millisecond: ``rand_a`` is
a counter (RFC 9562 §6.2, method 1) seeded with 11 random bits each new millisecond (the
top bit left clear so at least 2048 ids fit per millisecond); if it still overflows, the
timestamp is bumped by one millisecond, and a wall clock stepping backwards never makes
an id go backwards.

The wall clock (``time.time_ns``) is used on purpose and not the ``Clock`` port: an id
orders rows by when they were really written, whereas business "now" (renewals, trials,
test clocks that travel a month ahead) comes from the ``Clock`` port elsewhere. A frozen
test clock must not make every id share one timestamp.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Final

__all__ = ["new_id"]

_VERSION: Final = 0x7 << 76
_VARIANT: Final = 0b10 << 62
_RAND_B_MASK: Final = (1 << 62) - 1
_COUNTER_MAX: Final = 0xFFF
# 10 random bytes give 80 bits: the low 62 are rand_b, the top 11 seed the counter.
_SEED_SHIFT: Final = 80 - 11
_NS_PER_MS: Final = 1_000_000


def _uuid7_source(time_ns: Callable[[], int] = time.time_ns) -> Callable[[], uuid.UUID]:
    """Return a UUIDv7 generator with its own clock, counter and lock.

    A closure rather than a class because it is the hot path of every insert: local names
    cost a fraction of attribute look-ups, which keeps an id well under 2 µs. Tests build
    their own source with a fake ``time_ns`` instead of disturbing the process-wide one.
    """
    lock = threading.Lock()
    last_ms = -1
    counter = 0
    urandom = os.urandom
    from_bytes = int.from_bytes
    new_uuid = object.__new__
    set_slot = object.__setattr__
    uuid_type = uuid.UUID
    unknown = uuid.SafeUUID.unknown

    def next_id() -> uuid.UUID:
        nonlocal last_ms, counter
        entropy = from_bytes(urandom(10))
        with lock:
            now_ms = time_ns() // _NS_PER_MS
            if now_ms > last_ms:
                last_ms = now_ms
                counter = entropy >> _SEED_SHIFT
            elif counter < _COUNTER_MAX:
                counter += 1
            else:
                last_ms += 1
                counter = entropy >> _SEED_SHIFT
            value = (last_ms << 80) | _VERSION | (counter << 64) | _VARIANT
        # uuid.UUID(int=...) re-validates a value built here bit by bit; setting the slots
        # directly is what Python 3.14's UUID._from_int does, and saves a quarter of the cost.
        made = new_uuid(uuid_type)
        set_slot(made, "int", value | (entropy & _RAND_B_MASK))
        set_slot(made, "is_safe", unknown)
        return made

    return next_id


_next_id = _uuid7_source()


def _after_fork_in_child() -> None:
    # The child may have been forked while another thread held the lock (it would then
    # deadlock forever); a fresh source has a fresh lock. rand_b keeps ids from the parent
    # and the child apart even within the same millisecond and counter value.
    global _next_id
    _next_id = _uuid7_source()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def new_id() -> uuid.UUID:
    """Return a new UUID version 7, greater than every id this process made before.

    Thread-safe. Uses the wall clock on purpose, not the ``Clock`` port (see the module
    docstring): ids record when a row was really written.

    >>> first, second = new_id(), new_id()
    >>> (first.version, first < second)
    (7, True)
    """
    return _next_id()
