"""Billing periods and UTC timestamps: anchor days kept, clamped, never drifting."""

from __future__ import annotations

import calendar
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qzpay.domain.enums import Interval
from qzpay.errors import ValidationError
from qzpay.periods import period_bounds, shift
from qzpay.timestamps import aware_utc


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def starts(anchor: datetime, interval: Interval, every: int, count: int) -> list[date]:
    return [period_bounds(anchor, interval, every, i)[0].date() for i in range(count)]


# --- aware_utc --------------------------------------------------------------------------


def test_aware_utc_converts_other_zones_to_utc() -> None:
    montevideo = timezone(timedelta(hours=-3))
    converted = aware_utc(datetime(2028, 1, 31, 22, 30, tzinfo=montevideo), field="at")
    assert converted == utc(2028, 2, 1, 1, 30)
    assert converted.tzinfo is UTC


def test_aware_utc_rejects_a_naive_datetime_naming_the_field() -> None:
    with pytest.raises(ValidationError) as caught:
        aware_utc(datetime(2028, 1, 31), field="trial_end")
    assert caught.value.field == "trial_end"
    assert caught.value.rule == "must be timezone-aware"


@pytest.mark.parametrize("value", [date(2028, 1, 31), "2028-01-31T00:00:00Z", 1_700_000_000, None])
def test_aware_utc_rejects_what_is_not_a_datetime(value: object) -> None:
    with pytest.raises(ValidationError) as caught:
        aware_utc(value, field="at")
    assert caught.value.field == "at"
    assert caught.value.rule == "must be a timezone-aware datetime"


# --- shift ------------------------------------------------------------------------------


def test_monthly_shift_clamps_to_month_end_and_keeps_the_anchor_day() -> None:
    jan31 = utc(2028, 1, 31, 9, 15)
    assert shift(jan31, Interval.MONTH) == utc(2028, 2, 29, 9, 15)
    assert shift(jan31, Interval.MONTH, 2) == utc(2028, 3, 31, 9, 15)
    assert shift(utc(2027, 1, 31), Interval.MONTH) == utc(2027, 2, 28)
    assert shift(utc(2028, 12, 31), Interval.MONTH) == utc(2029, 1, 31)
    assert shift(utc(2028, 5, 31), Interval.MONTH, 1) == utc(2028, 6, 30)


def test_yearly_shift_of_a_leap_day() -> None:
    leap_day = utc(2028, 2, 29, 12)
    assert shift(leap_day, Interval.YEAR) == utc(2029, 2, 28, 12)
    assert shift(leap_day, Interval.YEAR, 4) == utc(2032, 2, 29, 12)
    assert shift(leap_day, Interval.YEAR, 100) == utc(2128, 2, 29, 12)
    assert shift(utc(2096, 2, 29), Interval.YEAR, 4) == utc(2100, 2, 28)  # 2100 is not leap


def test_daily_and_weekly_shifts_add_exact_days() -> None:
    anchor = utc(2028, 2, 27, 23, 59)
    assert shift(anchor, Interval.DAY) == utc(2028, 2, 28, 23, 59)
    assert shift(anchor, Interval.DAY, 3) == utc(2028, 3, 1, 23, 59)
    assert shift(anchor, Interval.WEEK, 2) == anchor + timedelta(days=14)


def test_shift_by_zero_is_the_anchor_and_accepts_interval_strings() -> None:
    anchor = utc(2028, 1, 31)
    assert shift(anchor, Interval.MONTH, 0) == anchor
    assert shift(anchor, "month") == utc(2028, 2, 29)  # type: ignore[arg-type]


def test_shift_works_on_the_utc_day_of_an_aware_anchor() -> None:
    # 22:00 on Jan 31 in UTC-3 is already Feb 1 in UTC: the schedule follows UTC.
    anchor = datetime(2028, 1, 31, 22, tzinfo=timezone(timedelta(hours=-3)))
    assert shift(anchor, Interval.MONTH) == utc(2028, 3, 1, 1)


@pytest.mark.parametrize(
    ("anchor", "interval", "count", "field"),
    [
        (datetime(2028, 1, 31), Interval.MONTH, 1, "anchor"),
        (utc(2028, 1, 31), Interval.MONTH, -1, "count"),
        (utc(2028, 1, 31), Interval.MONTH, 1.0, "count"),
        (utc(2028, 1, 31), Interval.MONTH, True, "count"),
        (utc(2028, 1, 31), "fortnight", 1, "interval"),
        (utc(2028, 1, 31), None, 1, "interval"),
        (utc(9999, 6, 1), Interval.YEAR, 1, "count"),
        (utc(9999, 12, 31), Interval.DAY, 1, "count"),
    ],
)
def test_shift_rejects_bad_inputs_naming_the_field(
    anchor: datetime, interval: object, count: object, field: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        shift(anchor, interval, count)  # type: ignore[arg-type]
    assert caught.value.field == field


# --- period_bounds ----------------------------------------------------------------------


def test_monthly_periods_from_jan_31_return_to_the_31st() -> None:
    assert starts(utc(2028, 1, 31), Interval.MONTH, 1, 5) == [
        date(2028, 1, 31),
        date(2028, 2, 29),
        date(2028, 3, 31),
        date(2028, 4, 30),
        date(2028, 5, 31),
    ]
    assert period_bounds(utc(2028, 1, 31), Interval.MONTH, 1, 1) == (
        utc(2028, 2, 29),
        utc(2028, 3, 31),
    )


def test_yearly_periods_from_a_leap_day() -> None:
    assert starts(utc(2028, 2, 29), Interval.YEAR, 1, 5) == [
        date(2028, 2, 29),
        date(2029, 2, 28),
        date(2030, 2, 28),
        date(2031, 2, 28),
        date(2032, 2, 29),
    ]


def test_quarterly_periods_use_the_interval_count() -> None:
    assert starts(utc(2027, 11, 30), Interval.MONTH, 3, 4) == [
        date(2027, 11, 30),
        date(2028, 2, 29),
        date(2028, 5, 30),
        date(2028, 8, 30),
    ]


def test_weekly_periods_with_interval_count_two_last_fourteen_days() -> None:
    anchor = utc(2028, 2, 25, 8)
    assert period_bounds(anchor, Interval.WEEK, 2, 0) == (anchor, utc(2028, 3, 10, 8))
    assert period_bounds(anchor, Interval.WEEK, 2, 3) == (
        anchor + timedelta(days=42),
        anchor + timedelta(days=56),
    )


def test_daily_periods_with_interval_count_two_last_two_days() -> None:
    anchor = utc(2028, 2, 28, 23, 30)
    assert period_bounds(anchor, Interval.DAY, 2, 0) == (anchor, utc(2028, 3, 1, 23, 30))
    assert period_bounds(anchor, Interval.DAY, 2, 1) == (
        utc(2028, 3, 1, 23, 30),
        utc(2028, 3, 3, 23, 30),
    )


@pytest.mark.parametrize("interval_count", [0, -1, 1.0, True, "1", None])
def test_period_bounds_rejects_an_interval_count_below_one(interval_count: object) -> None:
    with pytest.raises(ValidationError) as caught:
        period_bounds(utc(2028, 1, 31), Interval.MONTH, interval_count, 0)  # type: ignore[arg-type]
    assert caught.value.field == "interval_count"


@pytest.mark.parametrize("index", [-1, 0.0, None])
def test_period_bounds_rejects_a_negative_or_non_int_index(index: object) -> None:
    with pytest.raises(ValidationError) as caught:
        period_bounds(utc(2028, 1, 31), Interval.MONTH, 1, index)  # type: ignore[arg-type]
    assert caught.value.field == "index"


def test_period_bounds_rejects_a_naive_anchor() -> None:
    with pytest.raises(ValidationError) as caught:
        period_bounds(datetime(2028, 1, 31), Interval.MONTH, 1, 0)
    assert caught.value.field == "anchor"


anchors = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2300, 12, 31), timezones=st.just(UTC)
)
intervals = st.sampled_from(list(Interval))


@given(
    anchor=anchors,
    interval=intervals,
    interval_count=st.integers(min_value=1, max_value=36),
    index=st.integers(min_value=0, max_value=120),
)
def test_periods_are_contiguous_and_strictly_increasing(
    anchor: datetime, interval: Interval, interval_count: int, index: int
) -> None:
    start, end = period_bounds(anchor, interval, interval_count, index)
    next_start, next_end = period_bounds(anchor, interval, interval_count, index + 1)
    assert start < end == next_start < next_end
    assert start.tzinfo is UTC
    assert end.tzinfo is UTC
    assert start.time() == end.time() == anchor.time()
    if index == 0:
        assert start == anchor


@given(
    anchor=anchors,
    interval=st.sampled_from([Interval.MONTH, Interval.YEAR]),
    interval_count=st.integers(min_value=1, max_value=36),
    index=st.integers(min_value=0, max_value=120),
)
def test_monthly_and_yearly_periods_keep_the_anchor_day_clamped_to_month_end(
    anchor: datetime, interval: Interval, interval_count: int, index: int
) -> None:
    start, _ = period_bounds(anchor, interval, interval_count, index)
    month_length = calendar.monthrange(start.year, start.month)[1]
    assert start.day == min(anchor.day, month_length)
    months = interval_count * index * (12 if interval is Interval.YEAR else 1)
    elapsed = (start.year - anchor.year) * 12 + (start.month - anchor.month)
    assert elapsed == months


@given(
    anchor=anchors,
    interval=st.sampled_from([Interval.DAY, Interval.WEEK]),
    interval_count=st.integers(min_value=1, max_value=52),
    index=st.integers(min_value=0, max_value=500),
)
def test_daily_and_weekly_periods_have_exact_lengths(
    anchor: datetime, interval: Interval, interval_count: int, index: int
) -> None:
    start, end = period_bounds(anchor, interval, interval_count, index)
    days = interval_count * (7 if interval is Interval.WEEK else 1)
    assert end - start == timedelta(days=days)
    assert start - anchor == timedelta(days=days * index)
