"""Stripe's webhook signatures, checked against qzpay's clock, and its events made neutral.

Stripe signs ``"{t}.{payload}"`` with HMAC-SHA256 under the endpoint's secret and sends
``Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>...]`` (several ``v1`` while a
secret is being rolled). The SDK's own verifier reads the wall clock, accepts timestamps
in the future and treats a zero tolerance as no check at all (DESIGN §10), so the adapter
verifies by itself: constant-time compare, then ``|now - t| <= tolerance`` with the
Clock port's ``now``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from qzpay.adapters.stripe import results
from qzpay.contracts.provider import ProviderEvent
from qzpay.errors import SignatureError, ValidationError

SIGNATURE_HEADER: Final = "Stripe-Signature"
"""The header Stripe signs its webhooks in (matched case-insensitively)."""

_PAYMENT_SUFFIXES: Final[Mapping[str, str]] = {"payment_failed": "failed"}
_REFUND_OBJECT_EVENTS: Final = ("refund.", "charge.refund.")


def signature(secret: bytes, timestamp: int, payload: bytes) -> str:
    """The hex ``v1`` signature of ``payload`` sent at ``timestamp``."""
    return hmac.new(secret, f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()


def sign(secret: bytes, payload: bytes, timestamp: datetime) -> dict[str, str]:
    """The headers Stripe would send ``payload`` with at ``timestamp``."""
    unix = int(aware(timestamp, field="timestamp").timestamp())
    return {SIGNATURE_HEADER: f"t={unix},v1={signature(secret, unix, payload)}"}


def aware(moment: object, *, field: str) -> datetime:
    if not isinstance(moment, datetime) or moment.utcoffset() is None:
        raise ValidationError("must be a timezone-aware datetime", field=field)
    return moment


def verify(
    secret: bytes,
    *,
    payload: bytes,
    headers: Mapping[str, str],
    now: datetime,
    tolerance: timedelta,
) -> ProviderEvent:
    """Check ``payload``'s signature and age against ``now``; return the neutral event.

    Raises ``SignatureError`` for anything not signed with ``secret`` within the tolerance
    (its message never shows the secret or a signature), and ``ValidationError`` (field
    ``payload``) for a signed body that is not an event.
    """
    current = aware(now, field="now")
    wanted = SIGNATURE_HEADER.lower()
    value = next((v for k, v in headers.items() if k.lower() == wanted), None)
    if value is None:
        raise SignatureError(f"missing the {SIGNATURE_HEADER} header")
    timestamp, candidates = _parse_header(value)
    expected = signature(secret, timestamp, payload).encode()
    if not any(hmac.compare_digest(expected, c.encode()) for c in candidates):
        raise SignatureError("no v1 signature matches the payload")
    try:
        sent_at = datetime.fromtimestamp(timestamp, UTC)
    except (OverflowError, OSError, ValueError):
        raise SignatureError("the signature header's timestamp is out of range") from None
    if abs(current - sent_at) > tolerance:
        raise SignatureError(
            f"the timestamp is more than {tolerance} away from now "
            "(a replayed or delayed delivery, or a skewed clock)"
        )
    return parse_event(payload)


def _parse_header(value: str) -> tuple[int, list[str]]:
    timestamp: int | None = None
    candidates: list[str] = []
    for part in value.split(","):
        key, _, item = part.strip().partition("=")
        if key == "t":
            if not item.isdigit():
                raise SignatureError("the signature header's t= is not unix seconds")
            timestamp = int(item)
        elif key == "v1" and item:
            candidates.append(item)
    if timestamp is None or not candidates:
        raise SignatureError("the signature header needs a t= timestamp and a v1= signature")
    return timestamp, candidates


def parse_event(payload: bytes) -> ProviderEvent:
    """A Stripe event (``id``, ``type``, ``created``, ``data.object``) as a neutral one.

    - ``payment_intent.<x>`` → ``payment.<x>`` (``payment_failed`` → ``failed``);
    - ``refund.<x>``, ``charge.refund.<x>`` → ``refund.<x>``; ``charge.refunded`` →
      ``refund.updated`` (the charge's newest refund where the event lists them);
    - ``customer.subscription.<x>`` → ``subscription.<x>``;
    - ``checkout.session.<x>`` → ``checkout.<x>``;
    - ``provider_customer_id`` (the object's ``customer``) rides along where there is one,
      so a multi-tenant billing can route the event by the customer's reference;
    - anything else → ``other.<stripe type>``: stored and acknowledged, never applied
      (``charge.succeeded`` and the like only repeat what ``payment_intent.*`` says).
    """
    body = _json_object(payload)
    event_id, stripe_type = body.get("id"), body.get("type")
    if not isinstance(event_id, str) or not event_id:
        raise ValidationError('needs a string "id"', field="payload")
    if not isinstance(stripe_type, str) or not stripe_type:
        raise ValidationError('needs a string "type"', field="payload")
    obj = results.nested(body, "data", "object")
    if not isinstance(obj, Mapping):
        raise ValidationError('needs an object "data.object"', field="payload")
    neutral, data = _neutral(stripe_type, obj)
    return ProviderEvent(
        provider="stripe",
        provider_event_id=event_id,
        type=neutral,
        provider_type=stripe_type,
        occurred_at=_created(body.get("created")),
        data=data,
    )


def _json_object(payload: bytes) -> Mapping[str, Any]:
    try:
        body: Any = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        raise ValidationError("is not JSON", field="payload") from None
    if not isinstance(body, Mapping):
        raise ValidationError("must be a JSON object", field="payload")
    return body


def _created(created: object) -> datetime | None:
    if created is None:
        return None
    if isinstance(created, bool) or not isinstance(created, int):
        raise ValidationError('"created" must be unix seconds', field="payload")
    try:
        return datetime.fromtimestamp(created, UTC)
    except (OverflowError, OSError, ValueError):
        raise ValidationError('"created" is out of range', field="payload") from None


def _neutral(stripe_type: str, obj: Mapping[str, Any]) -> tuple[str, dict[str, str | None]]:
    text = results.text
    if stripe_type.startswith("payment_intent."):
        suffix = stripe_type.removeprefix("payment_intent.")
        return f"payment.{_PAYMENT_SUFFIXES.get(suffix, suffix)}", {
            "provider_payment_id": text(obj.get("id")),
            "idempotency_key": results.idempotency_key_of(obj),
            "status": text(obj.get("status")),
            "provider_customer_id": text(obj.get("customer")),
        }
    if stripe_type.startswith(_REFUND_OBJECT_EVENTS):
        return f"refund.{stripe_type.rpartition('.')[2]}", _refund_data(obj)
    if stripe_type == "charge.refunded":
        listed = results.nested(obj, "refunds", "data")
        newest = listed[0] if isinstance(listed, list) and listed else None
        data = _refund_data(newest) if isinstance(newest, Mapping) else {}
        return "refund.updated", {
            "provider_refund_id": data.get("provider_refund_id"),
            "provider_payment_id": text(obj.get("payment_intent")),
            "idempotency_key": data.get("idempotency_key"),
            "status": data.get("status"),
        }
    if stripe_type.startswith("customer.subscription."):
        return f"subscription.{stripe_type.removeprefix('customer.subscription.')}", {
            "provider_subscription_id": text(obj.get("id")),
            "status": text(obj.get("status")),
            "idempotency_key": results.idempotency_key_of(obj),
            "provider_customer_id": text(obj.get("customer")),
        }
    if stripe_type.startswith("checkout.session."):
        return f"checkout.{stripe_type.removeprefix('checkout.session.')}", {
            "provider_checkout_id": text(obj.get("id")),
            "provider_payment_id": text(obj.get("payment_intent")),
            "idempotency_key": results.idempotency_key_of(obj),
            "status": text(obj.get("status")),
            "provider_customer_id": text(obj.get("customer")),
        }
    return f"other.{stripe_type}", {"provider_object_id": text(obj.get("id"))}


def _refund_data(refund: Mapping[str, Any]) -> dict[str, str | None]:
    text = results.text
    return {
        "provider_refund_id": text(refund.get("id")),
        "provider_payment_id": text(refund.get("payment_intent")),
        "idempotency_key": results.idempotency_key_of(refund),
        "status": text(refund.get("status")),
    }
