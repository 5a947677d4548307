"""``webhook_app(billing)``: provider webhooks as a framework-free ASGI application.

Mount it in any ASGI framework (Starlette, FastAPI, Litestar: ``docs/guide/webhooks.md``)
or serve it alone; ``POST <mount>/<provider>`` (``/webhooks/stripe``) is one delivery. The
provider's name is the last segment of the path, so the app works whether the framework
strips its mount path or only sets ``root_path``.

The answer comes as soon as the delivery is verified and stored (``billing.webhooks.
receive``): MercadoPago retries a delivery that takes more than 22 s, and applying an event
asks the provider for the charge first. The event is applied right after the answer is
sent, in the same request task; one never applied (the process died) is applied by the job
runner. Answers never hold internals:

- 200 ``{"received": true, "status": ...}``: stored (or a duplicate of a stored one, or
  owned by no tenant): the provider may stop retrying;
- 400 ``{"error": "invalid_signature"}`` or ``{"error": "invalid_payload"}``;
- 404 for a provider this billing does not use, 405 for another method than POST, 413 for
  a body over ``MAX_BODY``;
- 500 ``{"error": "internal"}`` when it could not be stored: the provider retries later.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

from qzpay.billing import Billing
from qzpay.errors import SignatureError, ValidationError
from qzpay.services.webhooks import MAX_BODY

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_log = logging.getLogger("qzpay.webhooks")


def webhook_app(billing: Billing) -> ASGIApp:
    """An ASGI app that hands each ``POST .../<provider>`` to ``billing.webhooks``.

    Served alone, its lifespan opens and closes ``billing``; mounted in a framework, the
    app's own lifespan should (``async with billing:``).

    >>> from qzpay import create_billing
    >>> from qzpay.adapters.fake import FakeProvider
    >>> from qzpay.adapters.memory import MemoryStorage
    >>> app = webhook_app(create_billing(storage=MemoryStorage(), provider=FakeProvider()))
    >>> callable(app)
    True
    """

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(billing, receive, send)
            return
        if scope["type"] != "http":
            return
        if scope.get("method") != "POST":
            await _answer(send, 405, {"error": "method_not_allowed"}, allow="POST")
            return
        provider = str(scope.get("path", "")).rstrip("/").rpartition("/")[2]
        if provider != billing.provider.name:
            await _answer(send, 404, {"error": "unknown_provider"})
            return
        body = await _body(receive)
        if body is None:
            await _answer(send, 413, {"error": "body_too_large"})
            return
        query = dict(parse_qsl(bytes(scope.get("query_string", b"")).decode("latin-1")))
        try:
            received = await billing.webhooks.receive(provider, _headers(scope), body, query)
        except SignatureError:
            await _answer(send, 400, {"error": "invalid_signature"})
            return
        except ValidationError:
            await _answer(send, 400, {"error": "invalid_payload"})
            return
        except Exception:
            _log.exception("a %s webhook could not be stored", provider)
            await _answer(send, 500, {"error": "internal"})
            return
        await _answer(send, 200, {"received": True, "status": received.status})
        if received.status == "received":
            try:
                await billing.webhooks.apply(received)
            except Exception:  # recorded or due again: the job runner applies it
                _log.exception("applying %s webhook %s", provider, received.provider_event_id)

    return app


async def _lifespan(billing: Billing, receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                await billing.open()
            except Exception as error:
                await send({"type": "lifespan.startup.failed", "message": type(error).__name__})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await billing.close()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _body(receive: Receive) -> bytes | None:
    """The request body, or ``None`` once it passes ``MAX_BODY``."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = bytes(message.get("body", b""))
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _headers(scope: Scope) -> dict[str, str]:
    """Header names lower-cased; a repeated header's values joined with commas (RFC 9110)."""
    headers: dict[str, str] = {}
    for name, value in scope.get("headers", ()):
        key = bytes(name).decode("latin-1").lower()
        text = bytes(value).decode("latin-1")
        headers[key] = f"{headers[key]},{text}" if key in headers else text
    return headers


async def _answer(send: Send, status: int, body: dict[str, Any], **extra: str) -> None:
    payload = json.dumps(body).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        *((name.encode(), value.encode()) for name, value in extra.items()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
