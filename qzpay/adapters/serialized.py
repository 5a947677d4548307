"""Atomic operations for stores whose write transactions never run concurrently.

In MemoryStorage (one lock per database) and SQLiteStorage (``BEGIN IMMEDIATE``: the write
lock is taken when the transaction begins) no other writer can act between a read and the
write that depends on it, so a plain read-check-write inside the transaction is atomic.
These functions are that read-check-write, written once against the storage port; a
third-party adapter with the same guarantee can reuse them. Adapters whose transactions run
concurrently (PostgresStorage) do the same with row locks in SQL instead.
"""

from __future__ import annotations

import attrs

from qzpay.adapters import storage_rules as rules
from qzpay.contracts.storage import StorageTransaction
from qzpay.domain.payments import Payment, Refund
from qzpay.domain.promotions import PromoCode, PromoCodeUsage
from qzpay.domain.records import IdempotencyKey
from qzpay.domain.registry import spec_for


async def redeem_promo_code(tx: StorageTransaction, usage: PromoCodeUsage) -> PromoCode:
    code = await tx.get(PromoCode, usage.promo_code_id)
    if code is None:
        raise rules.missing(spec_for(PromoCode), usage.promo_code_id)
    redeemed_by_customer = await tx.count(
        PromoCodeUsage,
        filters={"promo_code_id": usage.promo_code_id, "customer_id": usage.customer_id},
    )
    rules.check_redemption(code, redeemed_by_customer)
    await tx.insert(usage)
    return await tx.update(attrs.evolve(code, times_redeemed=code.times_redeemed + 1))


async def add_refund(tx: StorageTransaction, refund: Refund) -> Payment:
    payment = await tx.get(Payment, refund.payment_id)
    if payment is None:
        raise rules.missing(spec_for(Payment), refund.payment_id)
    rules.check_refund(payment, refund)
    await tx.insert(refund)
    return await tx.update(
        attrs.evolve(payment, refunded_amount=payment.refunded_amount + refund.amount)
    )


async def store_idempotency_key(tx: StorageTransaction, record: IdempotencyKey) -> IdempotencyKey:
    stored = await tx.find(IdempotencyKey, key=record.key)
    if stored is not None:
        return stored
    await tx.insert(record)
    return record
