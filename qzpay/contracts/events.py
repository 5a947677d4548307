"""The EventBus port and the event value it carries."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Protocol, runtime_checkable
from uuid import UUID

import attrs


@attrs.frozen(kw_only=True)
class Event:
    """Something that happened in billing, published after its transaction committed.

    ``type`` follows the reference names (``customer.created``, ``payment.succeeded``);
    ``data`` is the domain object as it stands after the change.
    """

    id: UUID
    type: str
    data: Any
    livemode: bool
    tenant_id: str | None
    created_at: datetime


EventHandler = Callable[[Event], Awaitable[None] | None]
"""A handler may be a plain function or a coroutine function."""


@runtime_checkable
class EventBus(Protocol):
    """Delivers events to subscribers.

    ``publish`` is only ever called after the transaction that produced the event has
    committed, and a failing handler must never propagate into the billing call: the bus
    reports it (logging) and goes on with the next handler.
    """

    def subscribe(self, event_type: str, handler: EventHandler) -> None:
        """Register ``handler`` for ``event_type``; ``"*"`` receives every event."""
        ...

    async def publish(self, event: Event) -> None: ...
