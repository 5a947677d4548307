"""An in-process event bus: handlers run in the publishing task, one after another.

Billing publishes after every committed state change, so publishing is on the hot path of
every call. The bus therefore keeps, per event type, a ready-made tuple of the handlers that
apply (exact subscribers and ``"*"`` subscribers merged in subscription order); ``publish``
is one dict lookup, and returns at once when nobody listens.
"""

from __future__ import annotations

import inspect
import logging

from qzpay.contracts.events import Event, EventHandler
from qzpay.errors import ValidationError

__all__ = ["WILDCARD", "InProcessEventBus"]

WILDCARD = "*"
"""Subscribe with this event type to receive every event."""

_logger = logging.getLogger("qzpay.events")


def _describe(handler: EventHandler) -> str:
    """Name a handler for a log line: ``module.qualname`` when it has one, else its repr."""
    qualname = getattr(handler, "__qualname__", None)
    if qualname is None:
        return repr(handler)
    module = getattr(handler, "__module__", None)
    return f"{module}.{qualname}" if module else str(qualname)


class InProcessEventBus:
    """Delivers events to handlers registered in this process.

    Handlers run in subscription order, sequentially, in the task that publishes: a slow
    handler delays the billing call that published, so hand long work to a queue. A
    handler may be a plain function or a coroutine function (its result is awaited).

    A handler that raises ``Exception`` is logged on the ``qzpay.events`` logger (event
    type, event id and handler, never the event's data, which may hold personal data) and
    the next handler still runs: by the time an event is published its transaction has
    committed, so a failing side effect must not make the billing call look failed.
    Cancellation (``BaseException``) is not swallowed.

    Only ``anyio``-neutral code runs here, so the bus works on asyncio and trio. It is not
    thread-safe: subscribe and publish from one event loop.

    >>> import anyio, uuid
    >>> from datetime import UTC, datetime
    >>> bus = InProcessEventBus()
    >>> seen = []
    >>> bus.subscribe("payment.succeeded", lambda event: seen.append(event.type))
    >>> async def on_anything(event: Event) -> None:
    ...     seen.append(f"* {event.type}")
    >>> bus.subscribe("*", on_anything)
    >>> event = Event(id=uuid.uuid4(), type="payment.succeeded", data=None, livemode=False,
    ...               tenant_id=None, created_at=datetime.now(UTC))
    >>> anyio.run(bus.publish, event)
    >>> seen
    ['payment.succeeded', '* payment.succeeded']
    """

    __slots__ = ("_routes", "_wildcard")

    def __init__(self) -> None:
        # Per exact event type: every handler that applies, wildcard ones merged in, in
        # subscription order. Types nobody subscribed to exactly fall back to _wildcard.
        self._routes: dict[str, tuple[EventHandler, ...]] = {}
        self._wildcard: tuple[EventHandler, ...] = ()

    def subscribe(self, event_type: str, handler: EventHandler) -> None:
        """Register ``handler`` for ``event_type`` (an exact type, or ``"*"`` for all).

        Subscribing the same handler twice means it is called twice. A subscription made
        while an event is being published takes effect from the next event.
        """
        if not isinstance(event_type, str) or not event_type:
            raise ValidationError(
                'must be a non-empty event type such as "payment.succeeded", or "*"',
                field="event_type",
            )
        if not callable(handler):
            raise ValidationError("must be callable", field="handler")
        # Tuples are rebuilt, never mutated, so a publish already iterating keeps its snapshot.
        if event_type == WILDCARD:
            self._wildcard = (*self._wildcard, handler)
            for known_type, handlers in self._routes.items():
                self._routes[known_type] = (*handlers, handler)
        else:
            existing = self._routes.get(event_type, self._wildcard)
            self._routes[event_type] = (*existing, handler)

    async def publish(self, event: Event) -> None:
        """Call every handler for ``event.type``, then every remaining one, in order.

        Never raises because of a handler's ``Exception``; see the class docstring.
        """
        handlers = self._routes.get(event.type, self._wildcard)
        if not handlers:
            return
        for handler in handlers:
            try:
                result = handler(event)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                _logger.exception(
                    "event handler %s failed for %s event %s",
                    _describe(handler),
                    event.type,
                    event.id,
                )

    def __repr__(self) -> str:
        exact = sum(len(handlers) - len(self._wildcard) for handlers in self._routes.values())
        return f"InProcessEventBus(exact={exact}, wildcard={len(self._wildcard)})"
