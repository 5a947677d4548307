"""How the money paths behave where an application may want otherwise: passed to
``create_billing`` as values, never read from the environment (DESIGN §3.1)."""

from __future__ import annotations

from datetime import timedelta
from typing import Final

import attrs

from qzpay.errors import ConfigurationError


def _positive(instance: object, attribute: attrs.Attribute[timedelta], value: object) -> None:
    if not isinstance(value, timedelta) or value <= timedelta(0):
        raise ConfigurationError(f"{attribute.name} must be a timedelta greater than zero")


@attrs.frozen(kw_only=True)
class Settings:
    """The knobs of idempotency and reconciliation.

    >>> Settings().idempotency_ttl
    datetime.timedelta(days=1)
    >>> Settings(reconcile_after=timedelta(0))
    Traceback (most recent call last):
    ...
    qzpay.errors.ConfigurationError: reconcile_after must be a timedelta greater than zero
    """

    idempotency_ttl: timedelta = attrs.field(default=timedelta(hours=24), validator=_positive)
    """How long a call's idempotency key replays its first result (Stripe keeps 24 hours)."""
    reconcile_after: timedelta = attrs.field(default=timedelta(minutes=10), validator=_positive)
    """How long a payment or refund may stay ``pending`` before the job runner asks the
    provider what became of it."""
    abandon_after: timedelta = attrs.field(default=timedelta(hours=24), validator=_positive)
    """A pending payment the provider has never heard of, this old, is given up
    (``failed``, ``abandoned``): the provider's idempotency window is over by then."""


DEFAULTS: Final = Settings()
"""The settings ``create_billing`` uses where none are given."""
