"""Where refunds are capped: never beyond what the payment took, never in another currency.

Pure rules over domain values; ``qzpay.services.refunds`` enforces them atomically with the
storage port's guarded ``increment`` (so two concurrent refunds cannot both pass the cap).
"""

from __future__ import annotations

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
