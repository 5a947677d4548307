"""An invoice's amounts from its lines: subtotal, discount, tax, total, amount due.

Pure arithmetic on ``int`` minor units, each rounding done once, by ``qzpay.money``
(``ROUND_HALF_UP``):

- ``subtotal`` is the sum of ``quantity * unit_amount`` over the lines; a credit (a
  proration, a refund of unused time) is a line with a negative unit amount, as Stripe's.
- ``discount`` is the promo code's, when its ``duration`` covers this invoice: ``once`` the
  subscription's first billed period only, ``repeating`` its first ``duration_in_periods``,
  ``forever`` every one. A percentage is ``money.percent_of`` of the subtotal, a fixed
  amount is capped at the subtotal; never below 0, never above the subtotal (a discount
  never turns a charge into a credit, and a credit gets none).
- ``tax`` is ``tax_rate`` (a ``Decimal`` fraction: ``Decimal("0.21")`` is 21%) of
  ``subtotal - discount``, rounded once.
- ``total = subtotal - discount + tax``; ``amount_due = total - amount_paid``, never below
  0: a credit larger than the charges is not owed back by the invoice (Stripe moves it to
  the customer's balance; qzpay has none yet, so it is simply not due).

>>> from decimal import Decimal
>>> totals([Line(unit_amount=999, quantity=3), Line(unit_amount=-500)], tax_rate=Decimal("0.21"))
InvoiceTotals(subtotal=2497, discount=0, tax=524, total=3021, amount_paid=0, amount_due=3021)
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

import attrs

from qzpay import money
from qzpay.domain.discounts import discount as promo_discount
from qzpay.domain.enums import DiscountType, PromoDuration
from qzpay.domain.promotions import PromoCode
from qzpay.errors import ValidationError


@attrs.frozen(kw_only=True)
class Line:
    """What the totals need of a line: its unit amount and quantity."""

    unit_amount: int
    quantity: int = 1

    @property
    def amount(self) -> int:
        return self.unit_amount * self.quantity


@attrs.frozen(kw_only=True)
class InvoiceTotals:
    """The amounts of an invoice; ``total = subtotal - discount + tax``."""

    subtotal: int
    discount: int
    tax: int
    total: int
    amount_paid: int
    amount_due: int


def subtotal(lines: Iterable[Line]) -> int:
    """The sum of the lines' amounts (credits are negative lines)."""
    return sum(line.amount for line in lines)


def discount_applies(code: PromoCode, period_index: int) -> bool:
    """Whether ``code``'s duration covers the ``period_index``-th billed period (0-based).

    ``once``: period 0 only; ``repeating``: periods 0 to ``duration_in_periods - 1``;
    ``forever``: all. A trial code takes no money off any invoice.

    >>> from datetime import UTC, datetime
    >>> from uuid import uuid4
    >>> now = datetime(2030, 1, 1, tzinfo=UTC)
    >>> code = PromoCode(id=uuid4(), livemode=False, code="X", percent_off=Decimal("10"),
    ...     discount_type=DiscountType.PERCENTAGE, duration=PromoDuration.REPEATING,
    ...     duration_in_periods=3, created_at=now, updated_at=now)
    >>> [discount_applies(code, i) for i in range(4)]
    [True, True, True, False]
    """
    if period_index < 0 or code.discount_type is DiscountType.FREE_TRIAL_DAYS:
        return False
    if code.duration is PromoDuration.ONCE:
        return period_index == 0
    if code.duration is PromoDuration.REPEATING:
        return period_index < (code.duration_in_periods or 0)
    return True


def discount(
    base: int, currency: str, code: PromoCode | None = None, *, period_index: int = 0
) -> int:
    """What ``code`` takes off ``base`` on the ``period_index``-th billed period: 0 to
    ``base`` (0 for a credit, a code that does not cover the period, or a fixed amount in
    another currency: converting it would be a silent exchange-rate choice)."""
    if code is None or base <= 0 or not discount_applies(code, period_index):
        return 0
    try:
        return promo_discount(code, amount=base, currency=currency)
    except ValidationError:
        return 0


def tax(base: int, tax_rate: Decimal | None) -> int:
    """``tax_rate`` of ``base``, rounded once; a negative base (a credit) gives the tax back
    symmetrically, so a credit and the charge it mirrors net to zero tax.

    >>> tax(2497, Decimal("0.21")), tax(-2497, Decimal("0.21")), tax(2497, None)
    (524, -524, 0)
    """
    if tax_rate is None:
        return 0
    return money.percent_of(base, check_tax_rate(tax_rate) * 100)


def check_tax_rate(value: object, *, field: str = "tax_rate") -> Decimal:
    """``value`` if it is a finite ``Decimal`` fraction from 0 to 1 (``Decimal("0.21")``).

    A ``float`` is refused (0.21 is not 21/100 in binary), and so is a percentage written as
    21: a rate above 1 is almost always that mistake, and taxing 2100% is never meant.
    """
    if isinstance(value, bool) or not isinstance(value, Decimal) or not value.is_finite():
        raise ValidationError(
            "must be a finite Decimal fraction such as Decimal('0.21')",
            field=field,
            rule="decimal",
        )
    if not 0 <= value <= 1:
        raise ValidationError(
            f"must be from 0 to 1 (Decimal('0.21') is 21%), got {value}",
            field=field,
            rule="tax_rate_range",
        )
    return value


def totals(
    lines: Iterable[Line],
    *,
    currency: str = "USD",
    promo: PromoCode | None = None,
    period_index: int = 0,
    tax_rate: Decimal | None = None,
    amount_paid: int = 0,
) -> InvoiceTotals:
    """Every amount of an invoice with ``lines`` (see the module docstring for the rules)."""
    return from_subtotal(
        subtotal(lines),
        currency=currency,
        promo=promo,
        period_index=period_index,
        tax_rate=tax_rate,
        amount_paid=amount_paid,
    )


def from_subtotal(
    amount: int,
    *,
    currency: str,
    promo: PromoCode | None = None,
    period_index: int = 0,
    tax_rate: Decimal | None = None,
    amount_paid: int = 0,
) -> InvoiceTotals:
    """``totals`` when the subtotal is already known (lines added to a draft one by one)."""
    off = discount(amount, currency, promo, period_index=period_index)
    taxed = tax(amount - off, tax_rate)
    total = amount - off + taxed
    return InvoiceTotals(
        subtotal=amount,
        discount=off,
        tax=taxed,
        total=total,
        amount_paid=amount_paid,
        amount_due=max(total - amount_paid, 0),
    )
