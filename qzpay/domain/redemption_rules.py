"""Where promo code limits live: ``max_redemptions`` and ``max_redemptions_per_customer``.

Pure rules over domain values; ``qzpay.services.redemptions`` enforces them atomically with
the storage port's guarded ``increment`` (the code's counter) and a count of the customer's
redemptions read after it.
"""

from __future__ import annotations

from qzpay.domain.promotions import PromoCode
from qzpay.errors import InvalidStateError


def max_redemptions_reached(code: PromoCode) -> InvalidStateError:
    return InvalidStateError(
        f"promo code {code.code!r} reached its {code.max_redemptions} redemptions",
        field="promo_code",
        rule="max_redemptions",
    )


def check_customer_redemptions(code: PromoCode, redeemed_by_customer: int) -> None:
    """Refuse a redemption beyond the code's per-customer limit.

    ``redeemed_by_customer`` counts this customer's earlier redemptions (this one not
    included).
    """
    per_customer = code.max_redemptions_per_customer
    if per_customer is not None and redeemed_by_customer >= per_customer:
        raise InvalidStateError(
            f"this customer already redeemed {code.code!r} {per_customer} time(s)",
            field="promo_code",
            rule="max_redemptions_per_customer",
        )
