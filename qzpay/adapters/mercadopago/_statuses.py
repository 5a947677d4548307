"""MercadoPago's payment and refund statuses, and its rejection details, in qzpay's words.

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
from typing import Any, Final

import attrs

from qzpay.contracts.provider import ChargeResult, ChargeStatus, RefundResult, RefundStatusLiteral
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
