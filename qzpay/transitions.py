"""The subscription state machine: every allowed status change, in one table.

A service that changes a subscription's status asks ``transition`` first; an illegal move
raises ``InvalidStateError`` before anything is written. The table follows Stripe Billing's
lifecycle (``incomplete`` → ``active`` on first payment, ``trialing`` → ``active`` or
``past_due`` at trial end, ``past_due`` → ``unpaid``/``canceled`` when dunning gives up).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from qzpay.domain.enums import SubscriptionStatus as S
from qzpay.errors import InvalidStateError

ALLOWED: Final[Mapping[S, frozenset[S]]] = {
    S.INCOMPLETE: frozenset({S.ACTIVE, S.TRIALING, S.INCOMPLETE_EXPIRED, S.CANCELED}),
    S.INCOMPLETE_EXPIRED: frozenset(),
    S.TRIALING: frozenset({S.ACTIVE, S.PAST_DUE, S.PAUSED, S.CANCELED, S.UNPAID}),
    S.ACTIVE: frozenset({S.PAST_DUE, S.PAUSED, S.CANCELED, S.UNPAID}),
    S.PAST_DUE: frozenset({S.ACTIVE, S.UNPAID, S.CANCELED, S.PAUSED}),
    S.PAUSED: frozenset({S.ACTIVE, S.CANCELED}),
    S.UNPAID: frozenset({S.ACTIVE, S.CANCELED}),
    S.CANCELED: frozenset(),
}


ENDED: Final = frozenset(status for status, onward in ALLOWED.items() if not onward)
"""Statuses a subscription never leaves: it bills nothing more."""


def transition(current: S, target: S) -> S:
    """``target`` if a subscription may go there from ``current``; else ``InvalidStateError``."""
    if target not in ALLOWED[current]:
        raise InvalidStateError(
            f"a {current.value} subscription cannot become {target.value}",
            field="status",
            rule="transition",
        )
    return target
