"""``create_billing``: the composition root, the one core module that may name adapters.

It picks the defaults a user does not have to think about (the system clock, the
in-process event bus) and checks that the pieces agree before anything runs.
"""

from __future__ import annotations

from datetime import timedelta

from qzpay import validation as check
from qzpay.adapters.clock import SystemClock
from qzpay.adapters.events import InProcessEventBus
from qzpay.billing import Billing, Tenancy
from qzpay.contracts.clock import Clock
from qzpay.contracts.events import EventBus
from qzpay.contracts.provider import PaymentProvider
from qzpay.contracts.storage import StoragePort
from qzpay.errors import ConfigurationError
from qzpay.services.context import ServiceContext
from qzpay.settings import DEFAULTS, DunningPolicy, Settings


def create_billing(
    *,
    storage: StoragePort,
    provider: PaymentProvider,
    livemode: bool = False,
    tenancy: Tenancy | None = None,
    clock: Clock | None = None,
    event_bus: EventBus | None = None,
    idempotency_ttl: timedelta = DEFAULTS.idempotency_ttl,
    reconcile_after: timedelta = DEFAULTS.reconcile_after,
    abandon_after: timedelta = DEFAULTS.abandon_after,
    dunning: DunningPolicy = DEFAULTS.dunning,
    invoice_number_prefix: str = DEFAULTS.invoice_number_prefix,
    trial_will_end_days: int = DEFAULTS.trial_will_end_days,
    job_lease: timedelta = DEFAULTS.job_lease,
) -> Billing:
    """Wire qzpay to your storage, payment provider, clock and event bus.

    Tenancy is declared once, on the storage (``multi_tenant=``): ``tenancy=`` may be left
    out, and where it is given it must agree, so a mismatch is caught here rather than at
    the first call. The money paths' settings (``idempotency_ttl``, ``reconcile_after``,
    ``abandon_after``, ``dunning``, ``invoice_number_prefix``, ``trial_will_end_days``,
    ``job_lease``) are
    described on ``qzpay.settings.Settings``.

    >>> from qzpay.adapters.memory import MemoryStorage
    >>> from qzpay.adapters.fake import FakeProvider
    >>> billing = create_billing(storage=MemoryStorage(), provider=FakeProvider())
    >>> (billing.livemode, billing.tenancy)
    (False, 'single')
    >>> create_billing(storage=MemoryStorage(multi_tenant=True), provider=FakeProvider()).tenancy
    'multi'
    """
    if tenancy not in (None, "single", "multi"):
        raise ConfigurationError('tenancy must be "single" or "multi" (or left out)')
    multi = storage.multi_tenant
    if not isinstance(multi, bool):
        raise ConfigurationError(f"storage.multi_tenant must be True or False, not {multi!r}")
    if tenancy is not None and (tenancy == "multi") != multi:
        raise ConfigurationError(
            f'tenancy="{tenancy}" but the storage is {"multi" if multi else "single"}-tenant '
            f"(multi_tenant={multi}): drop tenancy= or make them agree"
        )
    context = ServiceContext(
        storage=storage,
        provider=provider,
        clock=clock if clock is not None else SystemClock(),
        events=event_bus if event_bus is not None else InProcessEventBus(),
        livemode=check.boolean(livemode, field="livemode"),
        tenant_id=None,
        multi_tenant=multi,
        settings=Settings(
            idempotency_ttl=idempotency_ttl,
            reconcile_after=reconcile_after,
            abandon_after=abandon_after,
            dunning=dunning,
            invoice_number_prefix=invoice_number_prefix,
            trial_will_end_days=trial_will_end_days,
            job_lease=job_lease,
        ),
    )
    return Billing(context)
