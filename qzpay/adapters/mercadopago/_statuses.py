"""MercadoPago's payment, refund and preapproval statuses, and its rejection details, in
qzpay's words.

A payment's ``status`` says where it is; its ``status_detail`` says why (for a rejection,
the card network's or MercadoPago's reason: ``cc_rejected_insufficient_amount``). qzpay keeps
MercadoPago's detail as ``provider_failure_code`` and maps it onto ``FAILURE_CODES``; a detail
it does not know is ``card_declined``, as the port asks.

>>> charge_result({"id": 7, "status": "rejected",
...                "status_detail": "cc_rejected_bad_filled_security_code"}).failure_code
'incorrect_cvc'
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

import attrs

from qzpay.contracts.provider import (
    ChargeResult,
    ChargeStatus,
    ProviderSubscription,
    RefundResult,
    RefundStatusLiteral,
)
from qzpay.errors import ProviderError

PAYMENT_STATUSES: Final[Mapping[str, ChargeStatus]] = {
    "approved": "succeeded",
    # Money was taken; what happened since (a dispute, a refund) is not the charge's outcome.
    "in_mediation": "succeeded",
    "charged_back": "succeeded",
    "refunded": "succeeded",
    "authorized": "processing",  # qzpay captures at once; an authorization is not yet money
    "in_process": "processing",
    "pending": "processing",
    "rejected": "failed",
    "cancelled": "failed",
}
"""Every payment status MercadoPago documents, as a ``ChargeResult.status``."""

FAILURE_DETAILS: Final[Mapping[str, str]] = {
    "cc_rejected_insufficient_amount": "insufficient_funds",
    "cc_rejected_bad_filled_security_code": "incorrect_cvc",
    "cc_rejected_bad_filled_card_number": "incorrect_number",
    "cc_rejected_bad_filled_date": "expired_card",
    "cc_rejected_bad_filled_other": "card_declined",
    "cc_rejected_call_for_authorize": "card_declined",
    "cc_rejected_card_disabled": "card_declined",
    "cc_rejected_max_attempts": "card_declined",
    "cc_rejected_other_reason": "card_declined",
    "cc_amount_rate_limit_exceeded": "card_declined",
    "cc_rejected_card_error": "processing_error",
    "cc_rejected_high_risk": "fraud_suspected",
    "cc_rejected_blacklist": "fraud_suspected",
    "rejected_high_risk": "fraud_suspected",
    "cc_rejected_3ds_challenge": "authentication_failed",
    "cc_rejected_3ds_mandatory": "authentication_failed",
    "cc_rejected_invalid_installments": "card_not_supported",
    "cc_rejected_duplicated_payment": "provider_rejected",
    "rejected_by_regulations": "provider_rejected",
    "rejected_insufficient_data": "provider_rejected",
    "expired": "abandoned",
    "by_collector": "provider_rejected",
    "by_payer": "abandoned",
}
"""MercadoPago's ``status_detail`` of a rejected or cancelled payment → ``FAILURE_CODES``."""

_MESSAGES: Final[Mapping[str, str]] = {
    "insufficient_funds": "The card has insufficient funds.",
    "incorrect_cvc": "The card's security code is incorrect.",
    "incorrect_number": "The card number is incorrect.",
    "expired_card": "The card's expiration date is wrong or past.",
    "fraud_suspected": "MercadoPago refused the payment as too risky.",
    "authentication_failed": "The card needs authentication this integration cannot do.",
    "card_not_supported": "The card does not support this payment.",
    "processing_error": "The card network failed to process the payment.",
    "provider_rejected": "MercadoPago refused the payment.",
    "abandoned": "The payment was cancelled before it completed.",
}

REFUND_STATUSES: Final[Mapping[str, RefundStatusLiteral]] = {
    "approved": "succeeded",
    "in_process": "pending",
    "pending": "pending",
    "authorized": "pending",
    "rejected": "failed",
    "cancelled": "failed",
}


def _text(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    return None if value is None else str(value)


def payment_id(body: Mapping[str, Any]) -> str:
    """The payment's id as a string (MercadoPago sends a JSON number)."""
    found = body.get("id")
    if found is None or isinstance(found, bool) or str(found) == "":
        raise ProviderError("MercadoPago answered without an id", retryable=True)
    return str(found)


def charge_result(body: Mapping[str, Any]) -> ChargeResult:
    """A MercadoPago payment as a ``ChargeResult``, with the qzpay key it was made with (its
    ``external_reference``)."""
    return attrs.evolve(_charge_result(body), idempotency_key=_text(body, "external_reference"))


def _charge_result(body: Mapping[str, Any]) -> ChargeResult:
    status = _text(body, "status") or ""
    mapped = PAYMENT_STATUSES.get(status)
    if mapped is None:
        raise ProviderError(
            f"MercadoPago answered a payment status qzpay does not know: {status[:40]!r}",
            retryable=False,
        )
    if mapped != "failed":
        return ChargeResult(provider_id=payment_id(body), status=mapped)
    detail = _text(body, "status_detail")
    code = FAILURE_DETAILS.get(detail or "", "card_declined")
    return ChargeResult(
        provider_id=payment_id(body),
        status="failed",
        failure_code=code,
        failure_message=_MESSAGES.get(code, "The card was declined."),
        provider_failure_code=detail or status,
    )


def refund_result(body: Mapping[str, Any], provider_id: str) -> RefundResult:
    """A MercadoPago refund as a ``RefundResult`` under qzpay's ``provider_id`` for it."""
    status = _text(body, "status") or ""
    mapped = REFUND_STATUSES.get(status)
    if mapped is None:
        raise ProviderError(
            f"MercadoPago answered a refund status qzpay does not know: {status[:40]!r}",
            retryable=False,
        )
    failure = None if mapped != "failed" else _text(body, "status_detail") or status
    return RefundResult(provider_id=provider_id, status=mapped, failure_code=failure)


PREAPPROVAL_STATUSES: Final[Mapping[str, str]] = {
    "pending": "incomplete",  # the payer has not authorized it at MercadoPago yet
    "authorized": "active",  # ``trialing`` before its first charge (``subscription``)
    "paused": "paused",
    "cancelled": "canceled",
}
"""Every preapproval status MercadoPago documents, as a neutral ``SUBSCRIPTION_STATUSES``."""


def moment(value: object, *, field: str) -> datetime | None:
    """One of MercadoPago's ISO 8601 times (``2028-01-31T05:00:00.000-04:00``) in UTC;
    ``None`` where it says none."""
    if value is None or value == "":
        return None
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        parsed = None
    if parsed is None or parsed.utcoffset() is None:
        raise ProviderError(
            f"MercadoPago answered a {field} that is not a time with an offset",
            retryable=False,
            field=field,
            rule="timestamp",
        )
    return parsed.astimezone(UTC)


def subscription(body: Mapping[str, Any]) -> ProviderSubscription:
    """A preapproval as a neutral ``ProviderSubscription``, with the qzpay key it was made
    with (its ``external_reference``).

    - ``authorized`` is ``trialing`` while MercadoPago has charged nothing yet
      (``summarized.charged_quantity`` 0 or absent) and the first charge was put off (a
      ``free_trial``, or an ``auto_recurring.start_date`` after ``date_created``: what
      ``create_subscription`` sends for ``trial_end``); the trial ends at the first charge
      (``next_payment_date``, else that ``start_date``). Otherwise ``active``. The adapter
      keeps no clock: the rule reads the preapproval alone, so a retrieve and a webhook
      answer the same, and the first charge's arrival is what ends the trial.
    - ``current_period_end`` is ``next_payment_date``; MercadoPago says no period start, so
      ``current_period_start`` is ``None`` (qzpay keeps its own).
    - A cancelled preapproval has ended at once (MercadoPago cannot cancel at period end);
      MercadoPago keeps no cancel time, so ``last_modified``, its last change, stands for
      ``canceled_at`` and ``ended_at``.

    >>> subscription({"id": "p1", "status": "authorized", "external_reference": "k",
    ...               "date_created": "2028-01-31T05:00:00.000-04:00",
    ...               "next_payment_date": "2028-02-14T05:00:00.000-04:00",
    ...               "auto_recurring": {"start_date": "2028-02-14T05:00:00.000-04:00"},
    ...               "summarized": {"charged_quantity": 0}}).status
    'trialing'
    """
    preapproval_id = _text(body, "id")
    if not preapproval_id:
        raise ProviderError("MercadoPago answered a preapproval without an id", retryable=True)
    status = _text(body, "status") or ""
    neutral = PREAPPROVAL_STATUSES.get(status)
    if neutral is None:
        raise ProviderError(
            f"MercadoPago answered a preapproval status qzpay does not know: {status[:40]!r}",
            retryable=False,
            field="status",
            rule="subscription_status",
        )
    recurring = body.get("auto_recurring")
    recurring = recurring if isinstance(recurring, Mapping) else {}
    summary = body.get("summarized")
    charged = summary.get("charged_quantity") if isinstance(summary, Mapping) else None
    created = moment(body.get("date_created"), field="date_created")
    start = moment(recurring.get("start_date"), field="auto_recurring.start_date")
    next_payment = moment(body.get("next_payment_date"), field="next_payment_date")
    deferred = bool(recurring.get("free_trial")) or (
        start is not None and created is not None and start > created
    )
    trial_end: datetime | None = None
    if neutral == "active" and not charged and deferred:
        neutral = "trialing"
        trial_end = next_payment or start
    ended = (
        moment(body.get("last_modified"), field="last_modified") if neutral == "canceled" else None
    )
    return ProviderSubscription(
        provider_id=preapproval_id,
        status=neutral,
        provider_status=status,
        current_period_end=next_payment,
        trial_end=trial_end,
        canceled_at=ended,
        ended_at=ended,
        idempotency_key=_text(body, "external_reference") or None,
        # A pending preapproval waits for the payer to authorize it there.
        next_action_url=(_text(body, "init_point") or None) if neutral == "incomplete" else None,
    )
