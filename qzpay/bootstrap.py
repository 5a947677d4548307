"""``create_billing``: the composition root, the one core module that may name adapters.

It picks the defaults a user does not have to think about (the system clock, the
in-process event bus) and checks that the pieces agree before anything runs.
"""

from __future__ import annotations

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


def create_billing(
    *,
    storage: StoragePort,
    provider: PaymentProvider,
    livemode: bool = False,
    tenancy: Tenancy = "single",
    clock: Clock | None = None,
    event_bus: EventBus | None = None,
) -> Billing:
    """Wire qzpay to your storage, payment provider, clock and event bus.

    >>> from qzpay.adapters.memory import MemoryStorage
    >>> from qzpay.adapters.fake import FakeProvider
    >>> billing = create_billing(storage=MemoryStorage(), provider=FakeProvider())
    >>> (billing.livemode, billing.tenancy)
    (False, 'single')
    """
    if tenancy not in ("single", "multi"):
        raise ConfigurationError('tenancy must be "single" or "multi"')
    multi = tenancy == "multi"
    if storage.multi_tenant != multi:
        raise ConfigurationError(
            f'tenancy="{tenancy}" but the storage was opened with multi_tenant={storage.multi_tenant}: '
            "they must agree"
        )
    context = ServiceContext(
        storage=storage,
        provider=provider,
        clock=clock if clock is not None else SystemClock(),
        events=event_bus if event_bus is not None else InProcessEventBus(),
        livemode=check.boolean(livemode, field="livemode"),
        tenant_id=None,
        multi_tenant=multi,
    )
    return Billing(context)
