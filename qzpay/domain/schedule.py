"""When the job runner next has work on a subscription: one rule for every status.

Every change of a subscription sets ``due_at`` from here, so the runner's claim (``due_at <=
now``) finds exactly what is due: a trial's reminder and its end, a renewal at the period's
end (or the end itself, when it cancels then), a dunning retry, a paused subscription's
resume, an incomplete one's expiry.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import attrs

from qzpay.domain.enums import SubscriptionStatus as S
from qzpay.domain.subscriptions import Subscription
from qzpay.settings import Settings

INCOMPLETE_EXPIRES_AFTER = timedelta(hours=23)
"""An incomplete subscription whose first payment has not succeeded by then expires
(Stripe's rule)."""


def next_due(subscription: Subscription, settings: Settings) -> datetime | None:
    """When the runner should next look at ``subscription`` (``None``: never by itself).

    >>> from datetime import UTC
    >>> from qzpay.conformance import entities
    >>> from qzpay.contracts.storage import Scope
    >>> sub = entities.subscription(Scope(livemode=False), entities.customer(Scope(livemode=False)),
    ...     entities.price(Scope(livemode=False), entities.plan(Scope(livemode=False)).id))
    >>> next_due(sub, Settings()) == sub.current_period_end
    True
    """
    if subscription.provider is not None:
        # Provider-managed: the provider renews and dunns it. Only a creation whose answer
        # was lost is qzpay's to finish (asked again with the same key), as a payment's.
        if subscription.provider_id is None and subscription.status == S.INCOMPLETE:
            return subscription.created_at + settings.reconcile_after
        return None
    status = subscription.status
    if status == S.TRIALING:
        end = subscription.trial_end or subscription.current_period_end
        remind = end - timedelta(days=settings.trial_will_end_days)
        if subscription.trial_reminded_at is None and settings.trial_will_end_days and remind < end:
            return max(remind, subscription.trial_start or remind)
        return end
    if status == S.ACTIVE:
        return subscription.current_period_end
    if status == S.PAST_DUE:
        if subscription.cancel_at_period_end:
            return subscription.current_period_end
        retries = settings.dunning.retry_after
        started = subscription.past_due_at or subscription.current_period_start
        attempt = min(subscription.dunning_attempts, len(retries) - 1)
        return started + retries[attempt] if retries else None
    if status == S.PAUSED:
        return subscription.resumes_at
    if status == S.INCOMPLETE:
        return subscription.created_at + INCOMPLETE_EXPIRES_AFTER
    return None  # canceled, incomplete_expired, unpaid: nothing happens by itself


def scheduled(subscription: Subscription, settings: Settings) -> Subscription:
    """``subscription`` with ``due_at`` set by ``next_due``: what every change of one writes."""
    return attrs.evolve(subscription, due_at=next_due(subscription, settings))


def still_due(current: Subscription, claimed: Subscription, now: datetime) -> bool:
    """Whether the row as it is now still has the work it was claimed for: the same status,
    and due. A runner whose lease ran out may find its work done by another."""
    return current.status == claimed.status and current.due_at is not None and current.due_at <= now
