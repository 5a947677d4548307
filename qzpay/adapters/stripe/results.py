"""Stripe's objects (as plain dicts) read as qzpay's provider-neutral results.

The adapter turns every response into a plain dict (``StripeObject.to_dict()``) before
reading it, so what it reads does not depend on the SDK's typed classes, which change
between stripe 15 and 16; a field Stripe leaves out reads as ``None``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from qzpay.contracts.provider import (
    SUBSCRIPTION_STATUSES,
    ChargeResult,
    ChargeStatus,
    ProviderPaymentMethod,
    ProviderSubscription,
    RefundResult,
    RefundStatusLiteral,
)
from qzpay.errors import ProviderError

KEY_METADATA: Final = "qzpay_key"
"""The metadata entry that carries qzpay's idempotency key on what the adapter creates, so
a charge or refund can be found again by it (``retrieve_charge``, ``retrieve_refund``)."""

Plain = Mapping[str, Any]

_NEUTRAL_FAILURES: Final[Mapping[str, str]] = {
    "insufficient_funds": "insufficient_funds",
    "expired_card": "expired_card",
    "incorrect_cvc": "incorrect_cvc",
    "invalid_cvc": "incorrect_cvc",
    "incorrect_number": "incorrect_number",
    "invalid_number": "incorrect_number",
    "card_not_supported": "card_not_supported",
    "currency_not_supported": "currency_not_supported",
    "fraudulent": "fraud_suspected",
    "stolen_card": "fraud_suspected",
    "lost_card": "fraud_suspected",
    "pickup_card": "fraud_suspected",
    "merchant_blacklist": "fraud_suspected",
    "authentication_required": "authentication_failed",
    "payment_intent_authentication_failure": "authentication_failed",
    "processing_error": "processing_error",
}
"""Stripe's decline and error codes that have a neutral name of their own; every other code
(``generic_decline``, ``do_not_honor``, ``card_declined``...) is ``card_declined``."""

_OPEN_STATUSES: Final[Mapping[str, ChargeStatus]] = {
    "succeeded": "succeeded",
    "processing": "processing",
    "requires_action": "requires_action",
    # Not reachable with confirm=True and automatic capture; still open at Stripe, so
    # qzpay asks again later instead of calling it settled.
    "requires_confirmation": "processing",
    "requires_capture": "processing",
}


def text(value: object) -> str | None:
    """A field as a string, or ``None`` (webhook ``data`` values are strings)."""
    return value if isinstance(value, str) and value else None


def nested(plain: Plain | None, *path: str) -> Any:
    """``plain[a][b]...``, or ``None`` where any step is missing or not an object."""
    value: Any = plain
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def neutral_failure(code: str | None) -> str:
    """The neutral failure code (``FAILURE_CODES``) for Stripe's decline or error code."""
    return _NEUTRAL_FAILURES.get(code or "", "card_declined")


def idempotency_key_of(plain: Plain | None) -> str | None:
    """qzpay's key from an object's ``metadata.qzpay_key``, where it has one."""
    return text(nested(plain, "metadata", KEY_METADATA))


def payment_method(plain: Plain) -> ProviderPaymentMethod:
    """A PaymentMethod: its id, type and, for a card, brand, last 4 and expiry."""
    card = plain.get("card") if isinstance(plain.get("card"), Mapping) else None
    return ProviderPaymentMethod(
        provider_id=str(plain["id"]),
        type=text(plain.get("type")) or "card",
        brand=text(nested(card, "brand")),
        last4=text(nested(card, "last4")),
        exp_month=_integer(nested(card, "exp_month")),
        exp_year=_integer(nested(card, "exp_year")),
    )


def declined(error: Plain) -> ChargeResult:
    """A card error's body (HTTP 402) as a failed charge.

    The reason is ``decline_code`` where Stripe gives one (``insufficient_funds``), else the
    error's ``code`` (``expired_card``, ``authentication_required``); the PaymentIntent id
    comes from the ``payment_intent`` Stripe puts in the error, so the failed attempt can be
    looked up later.
    """
    reason = text(error.get("decline_code")) or text(error.get("code"))
    intent = error.get("payment_intent")
    intent_id = text(nested(intent, "id")) if isinstance(intent, Mapping) else text(intent)
    return ChargeResult(
        provider_id=intent_id or "",
        status="failed",
        failure_code=neutral_failure(reason),
        failure_message=text(error.get("message")),
        provider_failure_code=reason,
    )


def charge(intent: Plain) -> ChargeResult:
    """A PaymentIntent as it stands, as a charge result, with the qzpay key it was made with
    (its ``metadata.qzpay_key``)."""
    return _charge(intent, text(nested(intent, "metadata", KEY_METADATA)))


def _charge(intent: Plain, key: str | None) -> ChargeResult:
    """A PaymentIntent as it stands, as a charge result.

    ``requires_payment_method`` after a confirmation is a failed attempt (its
    ``last_payment_error`` says why); ``canceled`` is ``abandoned`` (nothing was taken).
    While ``requires_action``, the result carries the client secret and, where Stripe gives
    one, the 3-D Secure redirect URL.
    """
    intent_id = str(intent["id"])
    status = text(intent.get("status")) or ""
    if status in _OPEN_STATUSES:
        mapped = _OPEN_STATUSES[status]
        if mapped != "requires_action":
            return ChargeResult(provider_id=intent_id, status=mapped, idempotency_key=key)
        return ChargeResult(
            provider_id=intent_id,
            idempotency_key=key,
            status="requires_action",
            next_action_url=text(nested(intent, "next_action", "redirect_to_url", "url")),
            client_secret=text(intent.get("client_secret")),
        )
    if status == "canceled":
        reason = text(intent.get("cancellation_reason"))
        return ChargeResult(
            provider_id=intent_id,
            idempotency_key=key,
            status="failed",
            failure_code="abandoned",
            failure_message="the PaymentIntent was canceled",
            provider_failure_code=f"canceled:{reason}" if reason else "canceled",
        )
    error = intent.get("last_payment_error")
    if isinstance(error, Mapping):
        result = declined(error)
        return ChargeResult(
            provider_id=intent_id,
            idempotency_key=key,
            status="failed",
            failure_code=result.failure_code,
            failure_message=result.failure_message,
            provider_failure_code=result.provider_failure_code,
        )
    # requires_payment_method with no error: it was never confirmed with a card.
    return ChargeResult(
        provider_id=intent_id,
        idempotency_key=key,
        status="failed",
        failure_code="card_declined",
        failure_message=f"the PaymentIntent is {status or 'in an unknown state'}",
        provider_failure_code=status or None,
    )


_REFUND_STATUSES: Final[Mapping[str, RefundStatusLiteral]] = {
    "succeeded": "succeeded",
    "pending": "pending",
    "requires_action": "pending",
    "failed": "failed",
    "canceled": "failed",
}


def refund(plain: Plain) -> RefundResult:
    """A Refund as it stands, with its amount (Stripe's are already minor units) and the
    qzpay key it was made with, so a listed refund can be matched to qzpay's row; ``failed``
    carries Stripe's ``failure_reason``."""
    status = _REFUND_STATUSES.get(text(plain.get("status")) or "", "pending")
    return RefundResult(
        provider_id=str(plain["id"]),
        status=status,
        failure_code=(text(plain.get("failure_reason")) or "refund_failed")
        if status == "failed"
        else None,
        amount=_integer(plain.get("amount")),
        idempotency_key=idempotency_key_of(plain),
    )


ENDED_SUBSCRIPTION_STATUSES: Final = frozenset({"canceled", "incomplete_expired"})
"""Statuses Stripe never moves a subscription out of: cancelling one answers it as it is."""


def subscription(plain: Plain) -> ProviderSubscription:
    """A Subscription as it stands, in the port's words (Stripe's statuses are the port's).

    The current period is read from the first item (where API versions since 2025-03-31
    put it; qzpay makes one-item subscriptions) and else from the subscription itself
    (older versions, should an account's webhooks still be on one). A status Stripe adds
    later is refused rather than guessed at: mirroring it could stop or restart billing.

    >>> subscription({"id": "sub_1", "status": "trialing", "trial_end": 1801386000,
    ...               "items": {"data": [{"current_period_start": 1800000000,
    ...                                   "current_period_end": 1801386000}]},
    ...               "metadata": {"qzpay_key": "k"}}).current_period_end.isoformat()
    '2027-01-31T09:00:00+00:00'
    """
    status = text(plain.get("status")) or ""
    if status not in SUBSCRIPTION_STATUSES:
        raise ProviderError(
            f"Stripe answered a subscription status qzpay does not know: {status[:40]!r}",
            retryable=False,
            field="status",
            rule="subscription_status",
        )
    items = nested(plain, "items", "data")
    item = items[0] if isinstance(items, list) and items else None

    def period(name: str) -> datetime | None:
        on_item = moment(nested(item, name))
        return on_item if on_item is not None else moment(plain.get(name))

    return ProviderSubscription(
        provider_id=str(plain["id"]),
        status=status,
        provider_status=status,
        current_period_start=period("current_period_start"),
        current_period_end=period("current_period_end"),
        trial_end=moment(plain.get("trial_end")),
        cancel_at_period_end=plain.get("cancel_at_period_end") is True,
        canceled_at=moment(plain.get("canceled_at")),
        ended_at=moment(plain.get("ended_at")),
        idempotency_key=idempotency_key_of(plain),
    )


def moment(value: object) -> datetime | None:
    """Stripe's unix seconds as an aware UTC datetime; ``None`` where Stripe says none."""
    seconds = _integer(value)
    if seconds is None:
        return None
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        raise ProviderError(
            "Stripe answered a time that is out of range", retryable=False, rule="timestamp"
        ) from None


def best_intent(intents: list[Plain]) -> Plain | None:
    """Of the PaymentIntents found by one key, the one that counts.

    One key makes one PaymentIntent while Stripe remembers the key (24 hours); should there
    be more (the same key sent again days later), the one that took money wins, else the
    newest.
    """
    if not intents:
        return None
    succeeded = [i for i in intents if i.get("status") == "succeeded"]
    pool = succeeded or intents
    return max(pool, key=lambda i: _integer(i.get("created")) or 0)


def first_made(objects: list[Plain]) -> Plain | None:
    """Of the objects found by one key, the first made: the one qzpay's creation made
    (another could only come from the same key sent again after Stripe forgot it)."""
    if not objects:
        return None
    return min(objects, key=lambda o: _integer(o.get("created")) or 0)


def _integer(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
