"""Redeeming a promo code, atomically within its limits.

The limits are the domain's (``qzpay.domain.redemption_rules``); atomicity is the storage's:
the code's ``times_redeemed`` is incremented bounded by ``max_redemptions``, which holds the
code until the transaction ends, so the customer's redemptions counted after it cannot race.
A refusal is the domain's error for the limit: rule ``exhausted`` or ``customer_limit``, the
reasons ``billing.promo_codes.validate`` reports for the same limits.
"""

from __future__ import annotations

from qzpay.contracts.storage import StorageTransaction
from qzpay.domain.promotions import PromoCode, PromoCodeUsage
from qzpay.domain.redemption_rules import check_customer_redemptions, max_redemptions_reached
from qzpay.services.context import require


async def redeem(tx: StorageTransaction, usage: PromoCodeUsage) -> PromoCode:
    """Count one redemption of ``usage.promo_code_id`` and store ``usage``; the code as now."""
    code: PromoCode = await require(tx, PromoCode, usage.promo_code_id, field="promo_code_id")
    counted = await tx.increment(
        PromoCode,
        code.id,
        "times_redeemed",
        1,
        at_most="max_redemptions",
        at=usage.created_at,
    )
    if counted is None:
        raise max_redemptions_reached(code)
    if counted.max_redemptions_per_customer is not None:
        earlier = await tx.count(
            PromoCodeUsage,
            filters={"promo_code_id": code.id, "customer_id": usage.customer_id},
        )
        check_customer_redemptions(counted, earlier)
    await tx.insert(usage)
    return counted
