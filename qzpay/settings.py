"""How the money paths behave where an application may want otherwise: passed to
``create_billing`` as values, never read from the environment (DESIGN §3.1)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Final, Literal

import attrs

from qzpay.errors import ConfigurationError


def _positive(instance: object, attribute: attrs.Attribute[timedelta], value: object) -> None:
    if not isinstance(value, timedelta) or value <= timedelta(0):
        raise ConfigurationError(f"{attribute.name} must be a timedelta greater than zero")


def _retry_offsets(
    instance: object, attribute: attrs.Attribute[tuple[timedelta, ...]], value: object
) -> None:
    if not isinstance(value, tuple) or not all(isinstance(v, timedelta) for v in value):
        raise ConfigurationError("retry_after must be a tuple of timedeltas")
    if any(v <= timedelta(0) for v in value) or list(value) != sorted(set(value)):
        raise ConfigurationError(
            "retry_after must be increasing offsets greater than zero from the failed renewal"
        )


def _then(instance: object, attribute: attrs.Attribute[str], value: object) -> None:
    if value not in ("canceled", "unpaid"):
        raise ConfigurationError('then must be "canceled" or "unpaid"')


@attrs.frozen(kw_only=True)
class DunningPolicy:
    """When a failed renewal is retried, and what happens when every retry failed.

    ``retry_after`` are offsets from the failed renewal (Stripe's smart retries default to
    about a week); ``then`` is the subscription's status after the last one fails.

    >>> DunningPolicy().then
    'canceled'
    >>> [offset.days for offset in DunningPolicy().retry_after]
    [1, 3, 5, 7]
    """

    retry_after: tuple[timedelta, ...] = attrs.field(
        default=tuple(timedelta(days=d) for d in (1, 3, 5, 7)),
        converter=tuple,
        validator=_retry_offsets,
    )
    then: Literal["canceled", "unpaid"] = attrs.field(default="canceled", validator=_then)


_PREFIX = re.compile(r"[A-Za-z0-9_-]{0,20}")


def _invoice_prefix(instance: object, attribute: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str) or not _PREFIX.fullmatch(value):
        raise ConfigurationError(
            "invoice_number_prefix must be up to 20 letters, digits, '-' or '_'"
        )


def _reminder_days(instance: object, attribute: attrs.Attribute[int], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 30:
        raise ConfigurationError("trial_will_end_days must be an int from 0 to 30")


@attrs.frozen(kw_only=True)
class Settings:
    """The knobs of idempotency, reconciliation, dunning and invoice numbering.

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
    dunning: DunningPolicy = attrs.field(factory=DunningPolicy)
    """How failed renewals are retried (``qzpay.DunningPolicy``)."""
    invoice_number_prefix: str = attrs.field(default="INV-", validator=_invoice_prefix)
    """What invoice numbers start with: ``INV-000001``."""
    trial_will_end_days: int = attrs.field(default=3, validator=_reminder_days)
    """How many days before a trial ends ``subscription.trial_will_end`` is sent."""
    job_lease: timedelta = attrs.field(default=timedelta(minutes=5), validator=_positive)
    """How long a job runner holds what it claimed before another runner may take it over
    (a runner that died). PostgreSQL measures it on the server's clock, not the Clock
    port: a test that moves a FrozenClock by days between runs needs a lease shorter than
    the real time between them."""


DEFAULTS: Final = Settings()
"""The settings ``create_billing`` uses where none are given."""
