"""Proration: what a change of price or quantity in the middle of a period is worth.

Stripe's rule (DESIGN §7), to the second: of the current period, the part still to come is
``(period_end - at) / (period_end - period_start)``. The customer paid the old amount for
the whole period, so the unused part of it comes back as a credit (a negative amount), and
the rest of the period at the new amount is a charge. Each is rounded once, half away from
zero (``qzpay.money.ROUNDING``), from the exact fraction: integers all the way, never a
float, so a $10 → $20 monthly change exactly halfway gives −500 and +1000.

Because both amounts are rounded the same way from the same fraction, the net
(``credit + charge``) never exceeds the difference of the full amounts, and two equal
amounts cancel exactly.

>>> from datetime import datetime, UTC
>>> start, end = datetime(2028, 1, 1, tzinfo=UTC), datetime(2028, 1, 31, tzinfo=UTC)
>>> p = prorate(old_amount=1000, new_amount=2000, period_start=start, period_end=end,
...             at=datetime(2028, 1, 16, tzinfo=UTC))
>>> (p.credit, p.charge, p.net)
(-500, 1000, 500)
"""

from __future__ import annotations

from datetime import datetime, timedelta

import attrs

from qzpay.money import MAX_AMOUNT

__all__ = ["Proration", "prorate", "share"]

_SECOND = timedelta(seconds=1)


@attrs.frozen(kw_only=True)
class Proration:
    """The two sides of a mid-period change, in minor units.

    ``credit`` is ``<= 0`` (the unused part of the old amount, given back), ``charge`` is
    ``>= 0`` (the rest of the period at the new amount); ``seconds_left`` of
    ``seconds_total`` is the fraction both were computed from.
    """

    credit: int
    charge: int
    seconds_left: int
    seconds_total: int

    @property
    def net(self) -> int:
        """What the change costs (negative: what it gives back)."""
        return self.credit + self.charge

    @property
    def empty(self) -> bool:
        """Nothing to bill: no time left, or both amounts zero."""
        return self.credit == 0 and self.charge == 0


def share(amount: int, numerator: int, denominator: int) -> int:
    """``amount * numerator / denominator`` rounded once, half away from zero.

    The exact rational value is rounded with integer arithmetic, which is what
    ``Decimal(...).quantize(Decimal(1), ROUND_HALF_UP)`` of the exact quotient gives (the
    tests check the two agree), without a precision to choose.

    >>> share(1000, 1, 2), share(-5, 1, 2), share(1, 1, 3)
    (500, -3, 0)
    """
    if denominator <= 0 or numerator < 0:
        raise ValueError("share needs numerator >= 0 and denominator > 0")
    if amount < 0:
        return -share(-amount, numerator, denominator)
    quotient, remainder = divmod(amount * numerator, denominator)
    return quotient + (1 if 2 * remainder >= denominator else 0)


def prorate(
    *,
    old_amount: int,
    new_amount: int,
    period_start: datetime,
    period_end: datetime,
    at: datetime,
) -> Proration:
    """The credit for ``old_amount`` and the charge for ``new_amount`` from ``at`` to the
    end of the period ``[period_start, period_end)``.

    Amounts are the full period's (unit amount x quantity), non-negative. Time is counted
    in whole seconds (a part of a second is not billed); ``at`` outside the period is
    clamped to it, so a change at or after its end prorates nothing and one at its start
    prorates all of it.
    """
    for name, value in (("old_amount", old_amount), ("new_amount", new_amount)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_AMOUNT:
            raise ValueError(f"{name} must be an int of minor units from 0, got {value!r}")
    total = (period_end - period_start) // _SECOND
    if total <= 0:
        raise ValueError("a period must end at least a second after it starts")
    moment = min(max(at, period_start), period_end)
    left = min((period_end - moment) // _SECOND, total)
    return Proration(
        credit=-share(old_amount, left, total),
        charge=share(new_amount, left, total),
        seconds_left=left,
        seconds_total=total,
    )
