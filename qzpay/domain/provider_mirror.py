"""A provider-managed subscription's row, mirrored from what the provider says it is now.

The provider bills such a subscription itself (Stripe Billing, a MercadoPago preapproval);
qzpay keeps a row so entitlements, limits, metrics and lists work the same for both kinds.
The row follows the provider's answer, never an event's claim: webhooks and
``subscriptions.sync`` ask ``retrieve_subscription`` and write what comes back, so a late or
repeated event cannot move the mirror backwards. The provider's status is taken as it is
(``qzpay.transitions`` guards qzpay's own moves, not the provider's).

A field the provider does not say keeps qzpay's value; the moments only qzpay can know
(when it first saw a cancel, a pause, a failed renewal) are stamped with qzpay's clock.
"""

from __future__ import annotations

from datetime import datetime

import attrs

from qzpay.contracts.provider import SUBSCRIPTION_STATUSES, ProviderSubscription
from qzpay.domain.enums import SubscriptionStatus as S
from qzpay.domain.subscriptions import Subscription
from qzpay.errors import ProviderError

ENDED = frozenset({S.CANCELED, S.INCOMPLETE_EXPIRED})


def mirrored(current: Subscription, found: ProviderSubscription, now: datetime) -> Subscription:
    """``current`` as ``found`` says it is (``updated_at`` untouched: the caller stamps a
    real change). Never due: the provider renews and dunns it.

    >>> from datetime import UTC, datetime
    >>> from qzpay.contracts.storage import Scope
    >>> from qzpay.conformance import entities
    >>> scope = Scope(livemode=False)
    >>> sub = entities.subscription(scope, entities.customer(scope),
    ...     entities.price(scope, entities.plan(scope).id))
    >>> now = datetime(2030, 1, 1, tzinfo=UTC)
    >>> gone = mirrored(sub, ProviderSubscription(provider_id="sub_1", status="canceled"), now)
    >>> gone.status, gone.ended_at == now, gone.provider_id
    (<SubscriptionStatus.CANCELED: 'canceled'>, True, 'sub_1')
    """
    if found.status not in SUBSCRIPTION_STATUSES:
        raise ProviderError(
            f"the provider adapter answered the subscription status {found.status!r}, "
            f"not one of {', '.join(sorted(SUBSCRIPTION_STATUSES))}",
            retryable=False,
            field="status",
            rule="neutral_status",
        )
    status = S(found.status)
    ended = status in ENDED
    scheduled = found.cancel_at_period_end and not ended
    canceled_at = found.canceled_at
    if canceled_at is None and (scheduled or status == S.CANCELED):
        # As Stripe's: when the latest cancel was asked for (a cancel now after a scheduled
        # one moves it), kept while the provider stays in that same state.
        same = (
            current.status == S.CANCELED if status == S.CANCELED else current.cancel_at_period_end
        )
        canceled_at = (current.canceled_at if same else None) or now
    ended_at = found.ended_at
    if ended_at is None and ended:
        ended_at = current.ended_at or now
    return attrs.evolve(
        current,
        status=status,
        provider_id=found.provider_id,
        current_period_start=found.current_period_start or current.current_period_start,
        current_period_end=found.current_period_end or current.current_period_end,
        trial_end=found.trial_end or current.trial_end,
        cancel_at_period_end=scheduled,
        canceled_at=canceled_at if (scheduled or status == S.CANCELED) else None,
        ended_at=ended_at if ended else None,
        paused_at=(current.paused_at or now) if status == S.PAUSED else None,
        resumes_at=None,
        past_due_at=(current.past_due_at or now) if status == S.PAST_DUE else None,
        dunning_attempts=0,
        next_action=(
            {"type": "redirect_to_url", "url": found.next_action_url}
            if status == S.INCOMPLETE and found.next_action_url
            else None
        ),
        due_at=None,
    )


def event_for(before: Subscription, after: Subscription) -> str:
    """The event a mirrored change emits: the lifecycle's own name where the status moved
    to one it has (an app listening for ``subscription.canceled`` hears a cancel made in
    the provider's dashboard too), else ``subscription.synced``."""
    if after.status != before.status:
        if after.status == S.CANCELED:
            return "subscription.canceled"
        if after.status == S.PAST_DUE:
            return "subscription.past_due"
        if after.status == S.INCOMPLETE_EXPIRED:
            return "subscription.incomplete_expired"
    return "subscription.synced"
