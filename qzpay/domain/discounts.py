"""What a promo code takes off an amount, in minor units, and the answer of ``validate``.

A percentage is rounded once, by ``qzpay.money.percent_of`` (``ROUND_HALF_UP``); a fixed
amount applies only in its own currency; neither ever takes off more than the amount (a
discount never turns a charge into a credit). Free trial days take no money off: they move
the first charge instead.

>>> from datetime import UTC, datetime
>>> from decimal import Decimal
>>> from uuid import uuid4
>>> from qzpay.domain.enums import DiscountType
>>> now = datetime(2030, 1, 1, tzinfo=UTC)
>>> code = PromoCode(id=uuid4(), livemode=False, code="SAVE15", percent_off=Decimal("15"),
...                  discount_type=DiscountType.PERCENTAGE, created_at=now, updated_at=now)
>>> discount(code, amount=2999, currency="USD")
450
"""

from __future__ import annotations

import attrs

from qzpay import money
from qzpay.domain.enums import DiscountType
from qzpay.domain.promotions import PromoCode
from qzpay.errors import ValidationError


def discount(code: PromoCode, *, amount: int, currency: str) -> int:
    """The minor units ``code`` takes off ``amount`` (in ``currency``): 0 to ``amount``.

    A fixed amount in another currency is refused (``ValidationError``, field ``currency``):
    converting it would be a silent exchange-rate choice, so ``validate`` reports such a code
    as not applying (reason ``currency``) before asking here.
    """
    value = money.amount(amount)
    if code.discount_type is DiscountType.PERCENTAGE:
        if code.percent_off is None:  # a row written by hand; the service never stores one
            raise ValidationError("a percentage code needs percent_off", field="percent_off")
        return min(money.percent_of(value, code.percent_off), value)
    if code.discount_type is DiscountType.FIXED_AMOUNT:
        if code.currency != money.currency(currency).code or code.amount_off is None:
            raise ValidationError(
                f"promo code {code.code!r} takes off {code.currency} only, not {currency}",
                field="currency",
                rule="currency",
            )
        return min(code.amount_off, value)
    return 0


@attrs.frozen(kw_only=True)
class PromoCheck:
    """What ``billing.promo_codes.validate`` answers: the discount, or why there is none.

    ``reason`` is ``None`` exactly when ``valid``; otherwise one of
    ``qzpay.domain.redemption_rules.PromoReason`` (``"expired"``, ``"exhausted"``...).
    ``discount`` is in the price's minor units (0 when not valid, and for a trial code,
    whose ``trial_days`` say what it gives). ``promo_code`` is the code found, if any.
    """

    valid: bool
    discount: int
    reason: str | None
    promo_code: PromoCode | None
    trial_days: int | None
