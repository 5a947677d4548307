"""Timestamps at the boundary: every datetime qzpay keeps is timezone-aware UTC.

A naive datetime has no instant: the same value means different moments on a laptop in
São Paulo and on a server in UTC, and comparing it with an aware one raises at the worst
time. So naive values are refused where they enter (not guessed to be UTC or local), and
aware ones are normalized to UTC so that stored values compare, sort and serialize alike.
"""

from __future__ import annotations

from datetime import UTC, datetime

from qzpay.errors import ValidationError

__all__ = ["aware_utc"]


def aware_utc(value: object, *, field: str) -> datetime:
    """Return ``value`` converted to UTC; refuse naive datetimes and non-datetimes.

    Raises :class:`~qzpay.errors.ValidationError` naming ``field`` with the rule
    "must be timezone-aware" for a naive datetime, and "must be a timezone-aware
    datetime" for anything that is not a ``datetime`` (a ``date`` included: it has no
    time of day, so it names no instant).

    >>> from datetime import timedelta, timezone
    >>> aware_utc(datetime(2028, 1, 31, 21, 0, tzinfo=timezone(timedelta(hours=-3))), field="at")
    datetime.datetime(2028, 2, 1, 0, 0, tzinfo=datetime.timezone.utc)
    """
    if type(value) is datetime and value.tzinfo is UTC:
        return value  # nearly every value: astimezone would return it as it is
    if not isinstance(value, datetime):
        rule = "must be a timezone-aware datetime"
        raise ValidationError(f"{rule}, got {type(value).__name__}", field=field, rule=rule)
    if value.tzinfo is None or value.utcoffset() is None:
        rule = "must be timezone-aware"
        raise ValidationError(f"{rule}, got a naive datetime", field=field, rule=rule)
    return value.astimezone(UTC)
