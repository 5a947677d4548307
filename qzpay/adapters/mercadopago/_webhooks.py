"""MercadoPago's webhook signatures, checked against qzpay's clock, and its notifications
mapped to qzpay's neutral events.

MercadoPago signs a manifest, not the body: ``x-signature: ts=<ts>,v1=<hex>`` is the
HMAC-SHA256 (keyed with the application's secret signature) of
``id:{data.id};request-id:{x-request-id};ts:{ts};``, where ``data.id`` is the one in the
notification URL's query string (lower-cased when alphanumeric) and a pair whose value is
missing is left out. So the body's own ``data.id`` must agree with the signed one, and the
rest of the body (``type``, ``action``) is unsigned: the notification only says *which*
payment changed; qzpay asks MercadoPago for its state (``WEBHOOK_KINDS``), never trusting the
body for it. ``ts`` is checked as ``|now - ts| <= tolerance`` against the Clock port's
``now``; MercadoPago sends it in seconds, and a 13-digit value is read as milliseconds
(docs/decisions/0034-mercadopago-webhooks.md).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from qzpay.contracts.provider import ProviderEvent
from qzpay.errors import SignatureError, ValidationError

SIGNATURE_HEADER: Final = "x-signature"
REQUEST_ID_HEADER: Final = "x-request-id"
_MILLISECONDS_FROM: Final = 10**11
"""A ``ts`` at or above this is milliseconds (as seconds it would be past the year 5000)."""

EVENT_TYPES: Final[Mapping[str, str]] = {
    "payment": "payment.updated",
    "subscription_preapproval": "subscription.updated",
    "preapproval": "subscription.updated",
}
"""MercadoPago notification ``type`` → qzpay's neutral type; any other becomes
``mercadopago.<type>``, outside ``WEBHOOK_KINDS``: stored and acknowledged, not applied."""

_DATA_KEYS: Final[Mapping[str, str]] = {
    "payment.updated": "provider_payment_id",
    "subscription.updated": "provider_subscription_id",
}


def signed_id(data_id: str | None) -> str | None:
    """``data.id`` as MercadoPago puts it in the manifest: lower-cased when alphanumeric."""
    if data_id is None or data_id == "":
        return None
    return data_id.lower() if data_id.isalnum() else data_id


def manifest(data_id: str | None, request_id: str | None, ts: str) -> str:
    """The signed text; pairs with no value left out, the trailing semicolon kept.

    >>> manifest("ABC123", None, "1704908010")
    'id:abc123;ts:1704908010;'
    """
    parts = []
    if signed_id(data_id) is not None:
        parts.append(f"id:{signed_id(data_id)}")
    if request_id:
        parts.append(f"request-id:{request_id}")
    parts.append(f"ts:{ts}")
    return ";".join(parts) + ";"


def signature(secret: bytes, data_id: str | None, request_id: str | None, ts: str) -> str:
    return hmac.new(secret, manifest(data_id, request_id, ts).encode(), hashlib.sha256).hexdigest()


def _header(headers: Mapping[str, str], name: str) -> str | None:
    found = next((v for k, v in headers.items() if k.lower() == name), None)
    return None if found is None or not found.strip() else found.strip()


def _parse_header(header: str) -> tuple[str, list[str]]:
    ts: str | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, separator, value = part.strip().partition("=")
        if not separator or not value.strip():
            continue
        if key.strip().lower() == "ts":
            ts = value.strip()
        elif key.strip().lower() == "v1":
            signatures.append(value.strip())
    if ts is None or not signatures:
        raise SignatureError(f"the {SIGNATURE_HEADER} header needs ts= and v1= parts")
    if not ts.isdigit() or len(ts) > 16:
        raise SignatureError(f"the {SIGNATURE_HEADER} header's ts is not a unix timestamp")
    return ts, signatures


def sent_at(ts: str) -> datetime:
    """When ``ts`` says the notification was signed (seconds, or milliseconds)."""
    value = int(ts)
    seconds = value / 1000 if value >= _MILLISECONDS_FROM else value
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        raise SignatureError("the signature's ts is out of range") from None


def _body(payload: bytes) -> dict[str, Any]:
    try:
        body: Any = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        raise ValidationError("is not JSON", field="payload", rule="json_object") from None
    if not isinstance(body, dict):
        raise ValidationError("must be a JSON object", field="payload", rule="json_object")
    return body


def _body_data_id(body: Mapping[str, Any]) -> str | None:
    data = body.get("data")
    if not isinstance(data, Mapping):
        return None
    found = data.get("id")
    return None if found is None or isinstance(found, bool) else str(found)


def verify(
    *,
    secret: bytes,
    tolerance: timedelta,
    payload: bytes,
    headers: Mapping[str, str],
    now: datetime,
    query: Mapping[str, str] | None,
) -> ProviderEvent:
    """Check the signature and its age, then map the notification (see the module)."""
    header = _header(headers, SIGNATURE_HEADER)
    if header is None:
        raise SignatureError(f"missing the {SIGNATURE_HEADER} header")
    ts, candidates = _parse_header(header)
    request_id = _header(headers, REQUEST_ID_HEADER)
    body = _body(payload)
    body_id = _body_data_id(body)
    query_id = (query or {}).get("data.id") or None
    data_id = query_id if query_id is not None else body_id
    expected = signature(secret, data_id, request_id, ts).encode()
    if not any(hmac.compare_digest(expected, c.encode()) for c in candidates):
        raise SignatureError("no v1 signature matches the notification")
    if abs(now - sent_at(ts)) > tolerance:
        raise SignatureError(
            f"the signature's ts is more than {tolerance} away from now "
            "(a replayed or delayed delivery, or a skewed clock)"
        )
    if query_id is not None and body_id is not None and signed_id(body_id) != signed_id(query_id):
        raise SignatureError("the body's data.id is not the signed one")
    return _event(body, data_id, request_id, ts)


def _event(
    body: Mapping[str, Any], data_id: str | None, request_id: str | None, ts: str
) -> ProviderEvent:
    kind = body.get("type") or body.get("topic")
    if not isinstance(kind, str) or not kind:
        raise ValidationError('needs a string "type"', field="payload", rule="event_type")
    action = body.get("action")
    provider_type = action if isinstance(action, str) and action else kind
    neutral = EVENT_TYPES.get(kind, f"mercadopago.{kind}")
    data: dict[str, str] = {}
    key = _DATA_KEYS.get(neutral)
    if key is not None:
        if data_id is None:
            raise ValidationError(
                f"a {kind} notification needs a data.id", field="payload", rule="data_id"
            )
        data[key] = data_id
    elif data_id is not None:
        data["mercadopago_data_id"] = data_id
    return ProviderEvent(
        provider="mercadopago",
        provider_event_id=_event_id(body, kind, provider_type, data_id, request_id, ts),
        type=neutral,
        provider_type=provider_type,
        occurred_at=_occurred_at(body.get("date_created")),
        data=data,
    )


def _event_id(
    body: Mapping[str, Any],
    kind: str,
    provider_type: str,
    data_id: str | None,
    request_id: str | None,
    ts: str,
) -> str:
    """The notification's own ``id``; without one, its content and creation time (the same
    on every redelivery), and only as a last resort the delivery's request id."""
    found = body.get("id")
    if found is not None and not isinstance(found, bool) and str(found):
        return str(found)
    created = body.get("date_created")
    moment = str(created) if created else request_id or ts
    return f"{kind}:{provider_type}:{data_id or ''}:{moment}"


def _occurred_at(created: object) -> datetime | None:
    if not isinstance(created, str) or not created:
        return None
    try:
        parsed = datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError(
            '"date_created" is not an ISO 8601 time', field="payload", rule="date_created"
        ) from None
    if parsed.tzinfo is None:
        raise ValidationError(
            '"date_created" has no UTC offset', field="payload", rule="date_created"
        )
    return parsed.astimezone(UTC)
