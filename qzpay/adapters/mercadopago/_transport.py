"""Calling the synchronous MercadoPago SDK from async code: worker threads, bounded
concurrency, retries with the same idempotency key, and every failure as a ``ProviderError``.

The SDK (on ``requests``) blocks, so each call runs in a worker thread
(``anyio.to_thread.run_sync``) under one ``CapacityLimiter``: at most ``max_concurrency`` of
this provider's calls are in flight, and the event loop never waits on a socket. What the
SDK does not do, this module does (DESIGN §10):

- It answers errors as a dict (``{"status": 4xx/5xx, "response": {...}}``): every answer's
  status is checked here, and only a 2xx body leaves this module.
- Its per-call ``RequestOptions`` do not inherit the SDK's timeout and retries: each call
  gets its own, with ``connection_timeout`` a float and the SDK's own retries off (it
  retries only over https and never a POST, so they would behave differently in tests and
  in production).
- It sends a random ``x-idempotency-key`` unless told: a mutating call sends qzpay's key, the
  same on every retry, so a retry is a replay at MercadoPago, never a second charge.

Retries (bounded, exponential backoff with jitter): 408, 423, 424, 429 and 5xx answers, a
connection refused or dropped, a body cut short or not JSON. A read timeout is not retried
here: the request was sent and its outcome is unknown, so it is raised at once as a
retryable ``ProviderError`` (qzpay retries with the same key, or reconciles by asking).
Messages never carry the access token, the webhook secret or a long token-like value.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, TypeVar

import anyio
import anyio.to_thread
import requests
from mercadopago.config import RequestOptions
from mercadopago.errors.exceptions import MercadoPagoError

from qzpay.errors import ProviderError

RETRYABLE_STATUSES: Final = frozenset({408, 423, 424, 429, 500, 502, 503, 504})
"""Answers that say nothing was done, or that MercadoPago wants the same request again."""

MAX_BACKOFF: Final = 5.0
"""The longest wait between two tries, in seconds."""

_TOKEN_LIKE = re.compile(r"[A-Za-z0-9_\-]{24,}|\d{12,}")
"""Long ids, tokens and card-number-like digit runs: cut before they reach a message."""

SdkCall = Callable[[RequestOptions], Mapping[str, Any]]

_T = TypeVar("_T")


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret removed and every long token-like run shortened, at most
    300 characters: what an error message may carry of what MercadoPago said."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    text = _TOKEN_LIKE.sub(lambda found: found.group(0)[:4] + "…", text)
    return text[:300]


class Transport:
    """One provider's way to the SDK: its limiter, timeout, retries and secrets."""

    def __init__(
        self,
        *,
        access_token: str,
        secrets: tuple[str, ...],
        max_concurrency: int,
        timeout: float,
        max_retries: int,
        backoff: float,
    ) -> None:
        self._access_token = access_token
        self._secrets = secrets
        self.limiter = anyio.CapacityLimiter(max_concurrency)
        self._timeout = float(timeout)
        self._max_retries = max_retries
        self._backoff = backoff

    def options(self, idempotency_key: str | None) -> RequestOptions:
        """Per-call options: this provider's token and timeout, the SDK's retries off,
        and qzpay's idempotency key (lower-case, so it replaces the SDK's random one)."""
        headers = {} if idempotency_key is None else {"x-idempotency-key": idempotency_key}
        return RequestOptions(
            access_token=self._access_token,
            connection_timeout=self._timeout,
            custom_headers=headers,
            max_retries=0,
            retry_on=[],
        )

    async def call(
        self,
        what: str,
        sdk_call: SdkCall,
        *,
        idempotency_key: str | None = None,
        missing_ok: bool = False,
    ) -> Any:
        """Run ``sdk_call`` in a worker thread, retried as the module says; its 2xx body.

        ``what`` names the operation in messages (``"create the payment"``). With
        ``missing_ok``, a 404 answers ``None`` (a lookup that found nothing).
        """
        return await self.in_thread(
            lambda: self.call_here(
                what, sdk_call, idempotency_key=idempotency_key, missing_ok=missing_ok
            )
        )

    async def in_thread(self, work: Callable[[], _T]) -> _T:
        """Run ``work`` (``call_here`` steps) in one worker thread under the limiter: a
        charge's three SDK calls cost one hop from the event loop, not three (each hop is
        a round trip through the loop, ~0.2 ms on a small machine)."""
        return await anyio.to_thread.run_sync(work, limiter=self.limiter)

    def call_here(
        self,
        what: str,
        sdk_call: SdkCall,
        *,
        idempotency_key: str | None = None,
        missing_ok: bool = False,
    ) -> Any:
        """``call`` in the calling thread (a worker thread: it blocks, retries and backoffs
        included)."""
        options = self.options(idempotency_key)
        attempts = self._max_retries + 1
        failure: ProviderError | None = None
        for attempt in range(attempts):
            if attempt:
                time.sleep(self._delay(attempt))
            try:
                answer = sdk_call(options)
            except requests.exceptions.ReadTimeout:
                raise ProviderError(
                    f"MercadoPago did not answer in {self._timeout:g}s to {what}: the outcome "
                    "is unknown (retry with the same idempotency key, or reconcile)",
                    retryable=True,
                ) from None
            except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError):
                failure = ProviderError(
                    f"the connection to MercadoPago failed while trying to {what}", retryable=True
                )
                continue
            except MercadoPagoError as error:  # a body that is not JSON (cut, or a proxy's)
                failure = ProviderError(
                    f"MercadoPago answered {error.status_code} with a body that is not JSON "
                    f"while trying to {what}",
                    retryable=True,
                )
                continue
            except requests.exceptions.RequestException as error:
                raise ProviderError(
                    f"the request to {what} could not be made: {type(error).__name__}",
                    retryable=False,
                ) from None
            except ValueError as error:  # the SDK refused its arguments
                raise ProviderError(
                    f"the MercadoPago SDK refused the request to {what}: "
                    f"{redact(str(error), self._secrets)}",
                    retryable=False,
                ) from None
            status = answer.get("status")
            body = answer.get("response")
            if isinstance(status, int) and 200 <= status < 300:
                return body
            if status == 404 and missing_ok:
                return None
            failure = self.error(what, status, body)
            if not failure.retryable:
                raise failure
        assert failure is not None
        raise ProviderError(
            f"{failure.message} (gave up after {attempts} tries with the same idempotency key)",
            retryable=True,
            field=failure.field,
            rule=failure.rule,
        )

    def error(self, what: str, status: object, body: object) -> ProviderError:
        """The ``ProviderError`` of an error answer: MercadoPago's message (redacted), its
        ``cause`` code as ``rule``, ``retryable`` for the statuses worth trying again."""
        said = ""
        cause_code: str | None = None
        if isinstance(body, Mapping):
            said = str(body.get("message") or body.get("error") or "")
            causes = body.get("cause")
            if isinstance(causes, list) and causes and isinstance(causes[0], Mapping):
                code = causes[0].get("code")
                cause_code = None if code is None else str(code)[:40]
                said = said or str(causes[0].get("description") or "")
        code_text = status if isinstance(status, int) else "an unreadable status"
        message = f"MercadoPago answered {code_text} to {what}"
        if said:
            message += f": {redact(said, self._secrets)}"
        if status == 401:
            return ProviderError(
                f"{message} (check the access token)",
                retryable=False,
                field="access_token",
                rule="unauthorized",
            )
        retryable = isinstance(status, int) and (status in RETRYABLE_STATUSES or status >= 500)
        return ProviderError(message, retryable=retryable, rule=cause_code)

    def _delay(self, attempt: int) -> float:
        """Exponential backoff with jitter: half the step fixed, half random, so clients
        that failed together do not retry together."""
        step = min(MAX_BACKOFF, self._backoff * 2.0 ** (attempt - 1))
        return step / 2 + random.uniform(0, step / 2)
