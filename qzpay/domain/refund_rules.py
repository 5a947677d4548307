"""Where refunds are capped: never beyond what the payment took, never in another currency.

Pure rules over domain values; ``qzpay.services.refunds`` enforces them atomically with the
storage port's guarded ``increment`` (so two concurrent refunds cannot both pass the cap).
"""

from __future__ import annotations

from collections.abc import Sequence

from qzpay.contracts.provider import RefundResult
from qzpay.domain.enums import RefundStatus
from qzpay.domain.payments import Payment, Refund
from qzpay.errors import ValidationError


def check_refund(payment: Payment, refund: Refund) -> None:
    """Refuse a refund in another currency, or one that alone exceeds what is left."""
    if refund.currency != payment.currency:
        raise ValidationError(
            f"must be the payment's currency {payment.currency}",
            field="currency",
            rule="same_currency",
        )
    if refund.amount <= 0:
        raise ValidationError("must be more than 0", field="amount", rule="positive")
    if payment.refunded_amount + refund.amount > payment.amount:
        raise refund_too_large(payment)


def refund_too_large(payment: Payment) -> ValidationError:
    left = payment.amount - payment.refunded_amount
    return ValidationError(
        f"would refund more than the payment: at most {left} is left to refund",
        field="amount",
        rule="refund_within_payment",
    )


def listed_refund(
    refund: Refund, listed: Sequence[RefundResult], refunds: Sequence[Refund]
) -> RefundResult | None:
    """Which of the provider's refunds of a payment (``listed``) is ``refund``, whose answer
    was lost before qzpay learned its id; ``refunds`` are all of the payment's in qzpay.

    The one made with its key, where the provider echoes keys (Stripe). Where it echoes
    none (MercadoPago): the one refund the provider has that qzpay does not know, when
    qzpay is missing exactly one id and the amounts agree; anything less certain is
    ``None`` (asked again later, then given up as ``abandoned``). A refund made in the
    provider's dashboard at the same moment, for the same amount, would be taken for it:
    the money then moved as qzpay records it, only by another hand.
    """
    for found in listed:
        if refund.idempotency_key is not None and found.idempotency_key == refund.idempotency_key:
            return found
    known = {r.provider_id for r in refunds if r.provider_id is not None}
    strangers = [f for f in listed if f.provider_id not in known and f.idempotency_key is None]
    unanswered = [r for r in refunds if r.provider_id is None and r.status == RefundStatus.PENDING]
    if len(strangers) == 1 and unanswered == [refund] and strangers[0].amount == refund.amount:
        return strangers[0]
    return None
