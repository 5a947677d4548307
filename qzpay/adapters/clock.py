"""Clock adapters: the wall clock for production, a frozen one for tests and demos.

qzpay never calls ``datetime.now()`` itself; it asks the ``Clock`` port. Swapping in a
``FrozenClock`` is how tests and ``qzpay demo`` travel in time, the way Stripe's test clocks
do: advance a month, run the due jobs, watch the renewals happen.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from qzpay.errors import ValidationError

__all__ = ["FrozenClock", "SystemClock"]


def _as_utc(moment: object, *, field: str) -> datetime:
    """Return ``moment`` converted to UTC, refusing what is not an aware datetime.

    A naive datetime is refused rather than assumed to be UTC: guessing is how billing
    periods end up an offset's worth of hours wrong.
    """
    if not isinstance(moment, datetime):
        raise ValidationError("must be a datetime", field=field, rule="type")
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValidationError(
            "must be timezone-aware (for example datetime(2025, 1, 31, tzinfo=UTC))",
            field=field,
            rule="timezone_aware",
        )
    return moment.astimezone(UTC)


class SystemClock:
    """The real wall clock, in UTC.

    >>> SystemClock().now().tzinfo
    datetime.timezone.utc
    """

    __slots__ = ()

    def now(self) -> datetime:
        """Return the current moment as an aware UTC datetime."""
        return datetime.now(UTC)

    def __repr__(self) -> str:
        return "SystemClock()"


class FrozenClock:
    """A clock that stands still until it is told to move, like a Stripe test clock.

    ``now()`` returns the same moment until ``advance`` or ``set`` is called, so a test can
    create a subscription, jump past its trial and run the due jobs deterministically. Every
    moment it returns is in UTC, whatever zone it was given in.

    ``advance`` only moves forward: in billing, time that runs backwards makes periods,
    dunning schedules and due jobs incoherent, so a negative step is refused. ``set`` is the
    deliberate escape hatch: it moves to any aware moment, earlier ones included, for tests
    that need to rewind (for example to replay a webhook from the past).

    >>> from datetime import UTC, datetime, timedelta
    >>> clock = FrozenClock(datetime(2025, 1, 31, tzinfo=UTC))
    >>> clock.advance(timedelta(days=29)).isoformat()
    '2025-03-01T00:00:00+00:00'
    >>> clock.now() == clock.now()
    True
    >>> clock.set(datetime(2024, 12, 1, tzinfo=UTC)).isoformat()
    '2024-12-01T00:00:00+00:00'
    """

    __slots__ = ("_now",)

    def __init__(self, start: datetime) -> None:
        self._now = _as_utc(start, field="start")

    def now(self) -> datetime:
        """Return the frozen moment (aware, UTC)."""
        return self._now

    def advance(self, delta: timedelta) -> datetime:
        """Move forward by ``delta`` and return the new moment.

        A zero ``delta`` is allowed (a no-op); a negative one raises ``ValidationError``
        (field ``delta``) and leaves the clock where it was.
        """
        if not isinstance(delta, timedelta):
            raise ValidationError("must be a timedelta", field="delta", rule="type")
        if delta < timedelta(0):
            raise ValidationError(
                "must not be negative: billing time only moves forward (use set() to rewind)",
                field="delta",
                rule="non_negative",
            )
        self._now += delta
        return self._now

    def set(self, moment: datetime) -> datetime:
        """Jump to ``moment`` (aware; earlier or later than now) and return it in UTC.

        A naive ``moment`` raises ``ValidationError`` (field ``moment``) and leaves the clock
        where it was.
        """
        self._now = _as_utc(moment, field="moment")
        return self._now

    def __repr__(self) -> str:
        return f"FrozenClock({self._now.isoformat()})"
