"""What the stripe SDK raises, as qzpay's ``ProviderError``, and when a 429 is tried again.

``retryable`` is set by what is known about the outcome, not by the exception's class
alone: a connection error, a timeout, a 5xx, a 409 and a 429 may have done nothing or may
have done the work (the response was lost), so they are retryable and qzpay settles them
by asking the provider (``retrieve_charge``), never by charging under a new key. A request
Stripe refused (400, 401, 402 outside a charge, 403, 404) is not.

Messages carry Stripe's request id (support can look it up) and never a secret: API keys,
webhook secrets and client secrets are cut out of whatever Stripe said, and card tokens are
shortened.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

import stripe

from qzpay.errors import ProviderError

RATE_LIMIT_INITIAL_WAIT: Final = 0.5
"""Seconds before the first retry of a 429 (doubled each time, with jitter)."""
RATE_LIMIT_MAX_WAIT: Final = 5.0
"""The longest the adapter waits for a 429; a ``Retry-After`` asking for more is not waited
for (the error is raised, retryable, and qzpay's own retries or reconciliation follow)."""

_KEYS = re.compile(r"\b(?:sk|rk|pk)_(?:test|live)_[A-Za-z0-9*]+")
_WEBHOOK_SECRETS = re.compile(r"\bwhsec_[A-Za-z0-9]+")
_CLIENT_SECRETS = re.compile(r"\b((?:pi|seti|cs|src)_[A-Za-z0-9]+)_secret_[A-Za-z0-9]+")
_TOKENS = re.compile(r"\b((?:tok|pm|card|src|ba)_[A-Za-z0-9]{4})[A-Za-z0-9]{4,}")


class StripeProviderError(ProviderError):
    """A ``ProviderError`` from Stripe, with what support needs to find the request.

    ``request_id`` is Stripe's ``Request-Id`` (``None`` when no response came back),
    ``http_status`` the status it answered with, ``stripe_code`` its error code
    (``resource_missing``, ``idempotency_error``...).
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        request_id: str | None = None,
        http_status: int | None = None,
        stripe_code: str | None = None,
        decline_code: str | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(
            message, retryable=retryable, decline_code=decline_code, field=field, rule=stripe_code
        )
        self.request_id = request_id
        self.http_status = http_status
        self.stripe_code = stripe_code


def redact(message: str, secrets: Iterable[str]) -> str:
    """``message`` without secrets: the given ones, anything shaped like an API key, a
    webhook secret or a client secret, and with card tokens shortened."""
    for secret in secrets:
        if secret:
            message = message.replace(secret, "[redacted]")
    message = _KEYS.sub("[redacted API key]", message)
    message = _WEBHOOK_SECRETS.sub("[redacted webhook secret]", message)
    message = _CLIENT_SECRETS.sub(r"\1_secret_[redacted]", message)
    return _TOKENS.sub(r"\1…", message)


def header(headers: Mapping[str, str] | None, name: str) -> str | None:
    """A response header by name, case-insensitively (the SDK hands back httpx's headers,
    or a plain dict in some paths)."""
    if not headers:
        return None
    wanted = name.lower()
    return next((str(v) for k, v in headers.items() if k.lower() == wanted), None)


def error_body(error: stripe.StripeError) -> Mapping[str, Any]:
    """The ``error`` object of Stripe's JSON answer, or an empty mapping."""
    body = error.json_body
    inner = body.get("error") if isinstance(body, Mapping) else None
    return inner if isinstance(inner, Mapping) else {}


def rate_limit_wait(error: stripe.StripeError, retry: int) -> float | None:
    """Seconds to wait before retry number ``retry`` (0-based) of a 429, or ``None`` when
    Stripe said not to (``Stripe-Should-Retry: false``) or asked for longer than
    ``RATE_LIMIT_MAX_WAIT``. ``Retry-After`` is honoured; otherwise exponential backoff
    with jitter (half to all of the step, so many clients do not retry in step)."""
    if header(error.headers, "stripe-should-retry") == "false":
        return None
    asked = header(error.headers, "retry-after")
    if asked is not None:
        try:
            seconds = float(asked)
        except ValueError:
            seconds = -1.0  # an HTTP date or junk: fall back to our own backoff
        if seconds > RATE_LIMIT_MAX_WAIT:
            return None
        if seconds >= 0:
            return seconds
    step: float = min(RATE_LIMIT_INITIAL_WAIT * 2.0**retry, RATE_LIMIT_MAX_WAIT)
    return step * random.uniform(0.5, 1.0)


def is_missing(error: stripe.StripeError) -> bool:
    """Stripe answered that the object does not exist (404 ``resource_missing``)."""
    return error.http_status == 404 or error_body(error).get("code") == "resource_missing"


def translate(
    error: stripe.StripeError, *, action: str, secrets: Iterable[str]
) -> StripeProviderError:
    """``error`` as a ``StripeProviderError``; ``action`` says what was asked
    (``"create a PaymentIntent"``)."""
    body = error_body(error)
    status = error.http_status
    code = body.get("code") if isinstance(body.get("code"), str) else None
    decline = body.get("decline_code") if isinstance(body.get("decline_code"), str) else None
    param = body.get("param") if isinstance(body.get("param"), str) else None
    request_id = error.request_id or header(error.headers, "request-id")
    retryable = _retryable(error, status)
    if isinstance(error, stripe.APIConnectionError):
        cause = type(error.__cause__).__name__ if error.__cause__ else "a network error"
        parts = [
            f"could not {action}: no answer from Stripe ({cause}); "
            "the request may or may not have been done"
        ]
    else:
        said = " ".join(str(error.user_message or type(error).__name__).split())
        shown = status if status is not None else "with a body that could not be read"
        parts = [f"could not {action}: Stripe answered {shown}", redact(said, secrets)]
    if code:
        parts.append(f"code {code}" + (f", decline code {decline}" if decline else ""))
    if request_id:
        parts.append(f"request {request_id}")
    return StripeProviderError(
        "; ".join(parts),
        retryable=retryable,
        request_id=request_id,
        http_status=status,
        stripe_code=code,
        decline_code=decline,
        field=param,
    )


def _retryable(error: stripe.StripeError, status: int | None) -> bool:
    if isinstance(error, (stripe.APIConnectionError, stripe.RateLimitError)):
        return True
    if status is None:
        return isinstance(error, stripe.APIError)  # an answer that could not be read
    if status >= 500 or status in (409, 429):
        return True
    return header(error.headers, "stripe-should-retry") == "true"
