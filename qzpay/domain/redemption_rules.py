"""Promo code policy: when a code applies, and the error when it does not.

One place for every rule: ``validate`` reports the first broken one as its reason, and a
redemption (``subscriptions.create(promo_code=...)``) raises the same reason as the error's
rule, so what a checkout page showed is what the signup is told. Pure rules over domain
values; the service reads what they need (the code, the customer's redemptions, whether the
customer ever paid) and ``qzpay.services.redemptions`` enforces the two limits atomically
with the storage port's bounded ``increment`` and a count of the customer's redemptions
read after it.

>>> from datetime import UTC, datetime
>>> from uuid import uuid4
>>> from qzpay.domain.enums import DiscountType
>>> now = datetime(2030, 1, 1, tzinfo=UTC)
>>> code = PromoCode(id=uuid4(), livemode=False, code="TENOFF", amount_off=1000,
...                  currency="USD", discount_type=DiscountType.FIXED_AMOUNT,
...                  created_at=now, updated_at=now)
>>> refusal(code, now=now, plan_id=uuid4(), currency="EUR", amount=2900)
<PromoReason.CURRENCY: 'currency'>
>>> refusal(code, now=now, plan_id=uuid4(), currency="USD", amount=2900) is None
True
"""

from __future__ import annotations

import enum
from datetime import datetime
from uuid import UUID

from qzpay.domain.enums import DiscountType
from qzpay.domain.promotions import PromoCode
from qzpay.errors import InvalidStateError, QZPayError, ValidationError


class PromoReason(enum.StrEnum):
    """Why a code does not apply, in the order the rules are checked.

    First what the code itself allows now (it exists, is active, not expired, not used up),
    then whether it fits this customer and purchase.
    """

    NOT_FOUND = "not_found"
    INACTIVE = "inactive"
    EXPIRED = "expired"
    EXHAUSTED = "exhausted"
    CUSTOMER_LIMIT = "customer_limit"
    NOT_FOR_PLAN = "not_for_plan"
    CURRENCY = "currency"
    BELOW_MINIMUM = "below_minimum"
    FIRST_TIME_ONLY = "first_time_only"


_STATE_REASONS = frozenset(
    {
        PromoReason.INACTIVE,
        PromoReason.EXPIRED,
        PromoReason.EXHAUSTED,
        PromoReason.CUSTOMER_LIMIT,
    }
)
"""Reasons that are the code's state (an ``InvalidStateError``); the others say the code
does not fit what was asked (a ``ValidationError``)."""

PAID_STATUSES = ("succeeded", "partially_refunded", "refunded")
"""A customer with a payment in one of these has paid before: not a first-time customer."""


def refusal(
    code: PromoCode | None,
    *,
    now: datetime,
    plan_id: UUID,
    currency: str,
    amount: int,
    redeemed_by_customer: int = 0,
    has_paid: bool = False,
) -> PromoReason | None:
    """The first rule ``code`` breaks for this purchase, or ``None`` when it applies.

    ``redeemed_by_customer`` counts the customer's earlier redemptions of the code (only
    read when the code has a per-customer limit); ``has_paid`` says whether the customer
    has a payment in :data:`PAID_STATUSES` (only read for ``first_time_only`` codes).
    """
    if code is None:
        return PromoReason.NOT_FOUND
    if not code.active:
        return PromoReason.INACTIVE
    if code.expires_at is not None and code.expires_at <= now:
        return PromoReason.EXPIRED
    if code.max_redemptions is not None and code.times_redeemed >= code.max_redemptions:
        return PromoReason.EXHAUSTED
    per_customer = code.max_redemptions_per_customer
    if per_customer is not None and redeemed_by_customer >= per_customer:
        return PromoReason.CUSTOMER_LIMIT
    if code.plan_ids and str(plan_id) not in code.plan_ids:
        return PromoReason.NOT_FOR_PLAN
    priced_in_currency = (
        code.discount_type is DiscountType.FIXED_AMOUNT or code.minimum_amount is not None
    )
    if priced_in_currency and code.currency != currency:
        return PromoReason.CURRENCY
    if code.minimum_amount is not None and amount < code.minimum_amount:
        return PromoReason.BELOW_MINIMUM
    if code.first_time_only and has_paid:
        return PromoReason.FIRST_TIME_ONLY
    return None


def refusal_error(text: str, reason: PromoReason, code: PromoCode | None = None) -> QZPayError:
    """The error a redemption raises for ``reason``: field ``promo_code``, rule the reason.

    ``InvalidStateError`` when the code's state refuses (inactive, expired, used up),
    ``ValidationError`` when it does not fit the purchase (or does not exist).
    """
    message = _MESSAGES[reason].format(
        code=text,
        limit=code.max_redemptions if code else None,
        per_customer=code.max_redemptions_per_customer if code else None,
        currency=code.currency if code else None,
        minimum=code.minimum_amount if code else None,
    )
    error = InvalidStateError if reason in _STATE_REASONS else ValidationError
    return error(message, field="promo_code", rule=str(reason))


_MESSAGES = {
    PromoReason.NOT_FOUND: "no promo code {code!r}",
    PromoReason.INACTIVE: "promo code {code!r} was deactivated",
    PromoReason.EXPIRED: "promo code {code!r} expired",
    PromoReason.EXHAUSTED: "promo code {code!r} reached its {limit} redemptions",
    PromoReason.CUSTOMER_LIMIT: "this customer already redeemed {code!r} {per_customer} time(s)",
    PromoReason.NOT_FOR_PLAN: "promo code {code!r} does not apply to this plan",
    PromoReason.CURRENCY: "promo code {code!r} applies only to prices in {currency}",
    PromoReason.BELOW_MINIMUM: "promo code {code!r} needs an amount of at least {minimum}",
    PromoReason.FIRST_TIME_ONLY: "promo code {code!r} is for customers who never paid before",
}


def max_redemptions_reached(code: PromoCode) -> QZPayError:
    """The refusal when the bounded increment of ``times_redeemed`` was refused."""
    return refusal_error(code.code, PromoReason.EXHAUSTED, code)


def check_customer_redemptions(code: PromoCode, redeemed_by_customer: int) -> None:
    """Refuse a redemption beyond the code's per-customer limit.

    ``redeemed_by_customer`` counts this customer's earlier redemptions (this one not
    included).
    """
    per_customer = code.max_redemptions_per_customer
    if per_customer is not None and redeemed_by_customer >= per_customer:
        raise refusal_error(code.code, PromoReason.CUSTOMER_LIMIT, code)
