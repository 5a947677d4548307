"""Billing periods: where each period of a recurring schedule starts and ends.

Monthly and yearly schedules keep the anchor's day of month and clamp it to the month's
last day, so a subscription started on Jan 31 renews on Feb 29 (or 28), then Mar 31, and
one started on Feb 29 renews on Feb 28 in common years and Feb 29 again in leap years.
Every boundary is computed from the anchor, never from the previous period's end: stepping
from the end would lose the 31st for good after the first short month (Jan 31 → Feb 29 →
Mar 29 → ...). Daily and weekly schedules add exact 24-hour days, which is what "every
7 days" means in UTC.

All arithmetic is in UTC (see :mod:`qzpay.timestamps`): an aware anchor in another zone is
converted first, so the anchor day is the UTC day, and the time of day is kept.

>>> from datetime import datetime, UTC
>>> jan31 = datetime(2028, 1, 31, 12, 0, tzinfo=UTC)
>>> [str(period_bounds(jan31, Interval.MONTH, 1, i)[0].date()) for i in range(3)]
['2028-01-31', '2028-02-29', '2028-03-31']
"""

from __future__ import annotations

import calendar
from datetime import datetime, timedelta
from typing import Final

from qzpay.domain.enums import Interval
from qzpay.errors import ValidationError
from qzpay.timestamps import aware_utc

__all__ = ["period_bounds", "shift"]

_INTERVALS: Final = {member.value: member for member in Interval}


def _count(value: object, *, field: str, minimum: int) -> int:
    # bool is an int subclass, but True is never a meaningful count.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        rule = f"must be an int >= {minimum}"
        shown = value if isinstance(value, int) else type(value).__name__
        raise ValidationError(f"{rule}, got {shown}", field=field, rule=rule)
    return value


def _interval(value: object) -> Interval:
    if isinstance(value, str) and (found := _INTERVALS.get(value)) is not None:
        return found
    rule = f"must be one of {', '.join(_INTERVALS)}"
    shown = repr(value) if isinstance(value, str) else type(value).__name__
    raise ValidationError(f"{rule}, got {shown}", field="interval", rule=rule)


def _shift(anchor: datetime, interval: Interval, count: int, field: str) -> datetime:
    try:
        if interval is Interval.DAY:
            return anchor + timedelta(days=count)
        if interval is Interval.WEEK:
            return anchor + timedelta(weeks=count)
        months = count * 12 if interval is Interval.YEAR else count
        year, month0 = divmod(anchor.year * 12 + anchor.month - 1 + months, 12)
        day = min(anchor.day, calendar.monthrange(year, month0 + 1)[1])
        return anchor.replace(year=year, month=month0 + 1, day=day)
    except (OverflowError, ValueError):
        # datetime stops at year 9999; calendar.monthrange and replace raise ValueError.
        rule = "must keep the date within year 9999"
        raise ValidationError(f"{rule}, got {count} {interval}", field=field, rule=rule) from None


def shift(anchor: datetime, interval: Interval, count: int = 1) -> datetime:
    """Return ``anchor`` moved forward ``count`` intervals, in UTC.

    ``month`` and ``year`` keep the anchor's day of month, clamped to the target month's
    length; ``day`` and ``week`` add an exact ``timedelta``. The time of day is kept.
    ``count`` may be 0 (the anchor itself) but not negative: clamping is not invertible,
    so going back is not the mirror of going forward.

    >>> from datetime import datetime, UTC
    >>> shift(datetime(2028, 1, 31, tzinfo=UTC), Interval.MONTH, 2).date()
    datetime.date(2028, 3, 31)
    """
    start = aware_utc(anchor, field="anchor")
    return _shift(start, _interval(interval), _count(count, field="count", minimum=0), "count")


def period_bounds(
    anchor: datetime, interval: Interval, interval_count: int, index: int
) -> tuple[datetime, datetime]:
    """Return ``(start, end)`` of the ``index``-th period (0-based) of a schedule.

    The schedule renews every ``interval_count`` ``interval``s from ``anchor``. Both bounds
    are shifted from the anchor itself (``interval_count * index`` and
    ``interval_count * (index + 1)`` intervals), so periods are contiguous (the end of one
    is the start of the next), never drift off the anchor day, and the bounds of period
    1000 cost the same as those of period 1.

    >>> from datetime import datetime, UTC
    >>> start, end = period_bounds(datetime(2028, 1, 31, tzinfo=UTC), Interval.MONTH, 1, 1)
    >>> (start.date(), end.date())
    (datetime.date(2028, 2, 29), datetime.date(2028, 3, 31))
    """
    start = aware_utc(anchor, field="anchor")
    unit = _interval(interval)
    every = _count(interval_count, field="interval_count", minimum=1)
    nth = _count(index, field="index", minimum=0)
    return (
        _shift(start, unit, every * nth, "index"),
        _shift(start, unit, every * (nth + 1), "index"),
    )
