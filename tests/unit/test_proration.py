"""Proration to the second: hand-computed cases, and the bounds hypothesis checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qzpay.domain.proration import prorate, share
from qzpay.money import ROUNDING

JAN = datetime(2028, 1, 1, tzinfo=UTC)
FEB = datetime(2028, 2, 1, tzinfo=UTC)  # 31 days
HALFWAY = JAN + (FEB - JAN) / 2


def test_ten_to_twenty_dollars_exactly_halfway() -> None:
    change = prorate(old_amount=1000, new_amount=2000, period_start=JAN, period_end=FEB, at=HALFWAY)
    assert (change.credit, change.charge, change.net) == (-500, 1000, 500)
    assert change.seconds_left * 2 == change.seconds_total == 31 * 86_400


def test_a_downgrade_a_third_of_the_way_rounds_each_side_once() -> None:
    # 31 days, 10 days and 8 hours in: 20 days 16 hours left = 1_785_600 s of 2_678_400 s.
    at = JAN + timedelta(days=10, hours=8)
    change = prorate(old_amount=2999, new_amount=999, period_start=JAN, period_end=FEB, at=at)
    # 2999 * 1785600 / 2678400 = 1999.333... -> 1999; 999 * ... = 666.0 -> 666
    assert (change.credit, change.charge) == (-1999, 666)


def test_quantity_is_unit_amount_times_quantity() -> None:
    at = JAN + timedelta(days=21)  # 10 of 31 days left
    change = prorate(
        old_amount=500 * 2, new_amount=500 * 5, period_start=JAN, period_end=FEB, at=at
    )
    # 1000 * 10 / 31 = 322.58 -> 323; 2500 * 10 / 31 = 806.45 -> 806
    assert (change.credit, change.charge) == (-323, 806)


def test_a_half_unit_rounds_away_from_zero_on_both_sides() -> None:
    start, end = JAN, JAN + timedelta(seconds=2)
    change = prorate(
        old_amount=1,
        new_amount=3,
        period_start=start,
        period_end=end,
        at=start + timedelta(seconds=1),
    )
    assert (change.credit, change.charge) == (-1, 2)  # -0.5 -> -1, 1.5 -> 2


def test_parts_of_a_second_are_not_billed() -> None:
    at = HALFWAY - timedelta(microseconds=999_999)
    change = prorate(old_amount=1000, new_amount=2000, period_start=JAN, period_end=FEB, at=at)
    assert (change.credit, change.charge) == (-500, 1000)


def test_at_the_edges_of_the_period() -> None:
    whole = prorate(old_amount=1000, new_amount=2000, period_start=JAN, period_end=FEB, at=JAN)
    assert (whole.credit, whole.charge) == (-1000, 2000)
    before = prorate(
        old_amount=1000,
        new_amount=2000,
        period_start=JAN,
        period_end=FEB,
        at=JAN - timedelta(days=3),
    )
    assert before == whole
    for at in (FEB, FEB + timedelta(days=1)):
        over = prorate(old_amount=1000, new_amount=2000, period_start=JAN, period_end=FEB, at=at)
        assert over.empty
        assert over.seconds_left == 0


def test_nonsense_is_refused() -> None:
    with pytest.raises(ValueError, match="old_amount"):
        prorate(old_amount=-1, new_amount=0, period_start=JAN, period_end=FEB, at=JAN)
    with pytest.raises(ValueError, match="period"):
        prorate(old_amount=1, new_amount=1, period_start=FEB, period_end=JAN, at=JAN)


def _half_up(value: Fraction) -> int:
    """The reference: Decimal's ROUND_HALF_UP on the exact value (only a half can tie)."""
    if value.denominator == 2:
        exact = Decimal(value.numerator) / Decimal(2)
        return int(exact.quantize(Decimal(1), rounding=ROUNDING))
    return round(value)  # not a tie: the nearest integer, whatever the mode


amounts = st.integers(min_value=0, max_value=10**12)
instants = st.integers(min_value=0, max_value=10**8)


@given(
    amounts, st.integers(min_value=0, max_value=10**6), st.integers(min_value=1, max_value=10**6)
)
def test_share_is_the_exact_quotient_rounded_half_up(amount: int, left: int, total: int) -> None:
    left = min(left, total)
    exact = Fraction(amount * left, total)
    assert share(amount, left, total) == _half_up(exact)
    assert share(-amount, left, total) == -share(amount, left, total)


@given(amounts, amounts, instants, st.integers(min_value=1, max_value=10**8), instants)
def test_bounds(old: int, new: int, start_s: int, length_s: int, offset_s: int) -> None:
    start = JAN + timedelta(seconds=start_s)
    end = start + timedelta(seconds=length_s)
    at = start + timedelta(seconds=offset_s)
    change = prorate(old_amount=old, new_amount=new, period_start=start, period_end=end, at=at)
    assert -old <= change.credit <= 0
    assert 0 <= change.charge <= new
    assert abs(change.net) <= abs(new - old)
    if old == new:
        assert change.net == 0
