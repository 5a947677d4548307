"""Every event qzpay emits, by name, with what its ``data`` holds.

One registry, so a name is spelt one way everywhere: ``UnitOfWork.record`` refuses a name
that is not here (a programming error), and ``billing.on`` refuses one with a
``ValidationError`` that names the closest real name, so a typo in an app's subscription
fails at once instead of never firing. ``docs/events.md`` lists the same names, and a test
keeps the two equal.

Every event's ``data`` is the domain object as it stands after the change, committed; the
audit row the event carries the id of (``Event.id``) holds what changed.

>>> check_event_name("payment.succeeded")
'payment.succeeded'
>>> check_event_name("payment.succeded")
Traceback (most recent call last):
...
qzpay.errors.ValidationError: event_type: 'payment.succeded' is not an event qzpay emits; did you mean 'payment.succeeded'?
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from qzpay.errors import ValidationError

ALL_EVENTS: Final = "*"
"""What ``billing.on`` takes to receive every event."""

EVENTS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "customer.created": "the Customer as created",
        "customer.updated": "the Customer after the change of one or more fields",
        "customer.deleted": "the Customer as soft-deleted (deleted_at set)",
        "customer.provider_linked": (
            "the Customer, now known to the payment provider (first card attached)"
        ),
        "payment_method.attached": "the PaymentMethod as attached, is_default included",
        "payment_method.updated": "the PaymentMethod whose is_default changed",
        "payment_method.detached": "the PaymentMethod as detached (deleted_at set)",
        "plan.created": "the Plan as created",
        "plan.updated": "the Plan after the change of one or more fields",
        "price.created": "the Price as created",
        "price.updated": "the Price after the change of one or more fields",
        "subscription.created": (
            "the Subscription as created: trialing, active, or incomplete until it is paid"
        ),
        "subscription.activated": "the Subscription made active by its first paid payment",
        "subscription.trial_ended": (
            "the Subscription whose trial ended: active, or past_due when it was not paid"
        ),
        "subscription.canceled": (
            "the Subscription canceled: status canceled, canceled_at and ended_at set"
        ),
        "subscription.cancel_scheduled": (
            "the Subscription set to end at its period end (cancel_at_period_end True)"
        ),
        "subscription.uncanceled": (
            "the Subscription whose scheduled cancel was undone (cancel_at_period_end False)"
        ),
        "subscription.paused": "the Subscription paused: paused_at and resumes_at set",
        "subscription.resumed": "the Subscription active again, its new period starting now",
        "subscription.price_changed": (
            "the Subscription on its new price (and quantity), prorations on its invoice"
        ),
        "subscription.quantity_changed": (
            "the Subscription with its new quantity, prorations on its invoice"
        ),
        "subscription.trial_will_end": (
            "the trialing Subscription whose trial ends in trial_will_end_days (sent once)"
        ),
        "subscription.renewed": (
            "the Subscription in its new period; its invoice for the period is finalized"
        ),
        "subscription.past_due": (
            "the Subscription whose period charge failed: past_due_at set, dunning begins"
        ),
        "subscription.recovered": (
            "the past-due or unpaid Subscription active again: a retry or a new card paid"
        ),
        "subscription.dunning_exhausted": (
            "the Subscription whose last dunning retry failed: canceled or unpaid"
        ),
        "subscription.incomplete_expired": (
            "the incomplete Subscription whose first payment never succeeded within 23 hours"
        ),
        "subscription.synced": (
            "the provider-managed Subscription as the provider has it now (a webhook or "
            "subscriptions.sync), where anything changed"
        ),
        "subscription.job_failed": (
            "the Subscription whose due work raised: the error recorded, due_at backed off"
        ),
        "payment.created": (
            "the Payment committed pending, before the provider is asked to charge"
        ),
        "payment.succeeded": "the Payment the provider charged",
        "payment.failed": "the Payment the provider declined, with failure_code",
        "payment.requires_action": (
            "the Payment waiting for the customer (3-D Secure), with next_action"
        ),
        "payment.processing": "the Payment the provider accepted but has not settled yet",
        "payment.recorded": "the Payment made elsewhere and stored with payments.record",
        "payment.refunded": "the Payment refunded in full (refunded_amount equals amount)",
        "payment.partially_refunded": "the Payment with part of its amount refunded",
        "refund.created": (
            "the Refund committed pending, its amount reserved on the payment, before the "
            "provider is asked"
        ),
        "refund.succeeded": "the Refund the provider made",
        "refund.failed": (
            "the Refund the provider refused, with failure_code; its amount is refundable again"
        ),
        "invoice.created": "the Invoice as created: a draft, no number yet, its totals",
        "invoice.updated": "the draft Invoice with lines added and its totals recomputed",
        "invoice.finalized": "the Invoice finalized: open (or paid when nothing is due), numbered",
        "invoice.paid": "the Invoice paid: amount_paid, amount_due 0, paid_at set",
        "invoice.payment_failed": (
            "the open Invoice whose payment attempt failed, attempt_count counting it"
        ),
        "invoice.voided": "the Invoice voided: it keeps its number, nothing is due",
        "invoice.marked_uncollectible": (
            "the Invoice written off as uncollectible: it may still be paid or voided"
        ),
        "invoice.deleted": "the draft Invoice deleted (deleted_at set); it never had a number",
        "promo_code.created": "the PromoCode as created",
        "promo_code.deactivated": "the PromoCode no longer redeemable (active False)",
        "promo_code.redeemed": "the PromoCode with the redemption counted",
    }
)
"""Event name → what its ``data`` holds."""


def check_event_name(name: object) -> str:
    """``name`` if qzpay emits an event by that name (or it is ``"*"``).

    Anything else is a ``ValidationError`` (field ``event_type``, rule ``known_event``) that
    names the closest real name when there is one.
    """
    if isinstance(name, str) and (name == ALL_EVENTS or name in EVENTS):
        return name
    shown = repr(name) if isinstance(name, str) else f"a {type(name).__name__}"
    close = difflib.get_close_matches(name, EVENTS, n=1) if isinstance(name, str) else []
    hint = f"did you mean {close[0]!r}?" if close else "see docs/events.md for every event"
    raise ValidationError(
        f"{shown} is not an event qzpay emits; {hint}", field="event_type", rule="known_event"
    )
