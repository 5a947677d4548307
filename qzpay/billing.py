"""The Billing facade and ``create_billing``: the one place where qzpay is wired together."""

from __future__ import annotations

from types import TracebackType
from typing import Literal

from qzpay import validation as check
from qzpay.contracts.clock import Clock
from qzpay.contracts.events import EventHandler
from qzpay.contracts.provider import PaymentProvider
from qzpay.contracts.storage import StoragePort
from qzpay.errors import ConfigurationError
from qzpay.event_names import check_event_name
from qzpay.services.audit import AuditService
from qzpay.services.catalog import PlansService, PricesService
from qzpay.services.context import ServiceContext
from qzpay.services.customers import CustomersService
from qzpay.services.invoices import InvoicesService
from qzpay.services.jobs import JobsService
from qzpay.services.payment_methods import PaymentMethodsService
from qzpay.services.payments import PaymentsService
from qzpay.services.promo_codes import PromoCodesService
from qzpay.services.subscriptions import SubscriptionsService
from qzpay.services.webhooks import WebhooksService

Tenancy = Literal["single", "multi"]


class Billing:
    """Billing for one livemode (and, from ``for_tenant``, one tenant).

    Use it as an async context manager: entering opens the storage (creating or upgrading the
    schema where the adapter does that), leaving closes it once no one else uses it.
    """

    def __init__(self, context: ServiceContext, *, root: Billing | None = None) -> None:
        self._context = context
        self._root = root
        self.customers = CustomersService(context)
        self.plans = PlansService(context)
        self.prices = PricesService(context)
        self.payment_methods = PaymentMethodsService(context)
        self.subscriptions = SubscriptionsService(context)
        self.payments = PaymentsService(context)
        self.invoices = InvoicesService(context)
        self.promo_codes = PromoCodesService(context)
        self.jobs = JobsService(context)
        self.webhooks = WebhooksService(context)
        self.audit = AuditService(context)

    @property
    def livemode(self) -> bool:
        return self._context.livemode

    @property
    def tenant_id(self) -> str | None:
        return self._context.tenant_id

    @property
    def tenancy(self) -> Tenancy:
        return "multi" if self._context.multi_tenant else "single"

    @property
    def storage(self) -> StoragePort:
        return self._context.storage

    @property
    def provider(self) -> PaymentProvider:
        return self._context.provider

    @property
    def clock(self) -> Clock:
        return self._context.clock

    async def open(self) -> None:
        """Open the storage, as one more of its users: pair every ``open`` with a ``close``.

        The storage counts its users (an app's lifespan, a worker, a second facade, a tenant
        view), so each may enter and leave on its own; ``async with billing:`` pairs them.
        """
        await self._context.storage.open()

    async def close(self) -> None:
        """Leave the storage; it really closes when its last user leaves.

        A tenant view counts like any other user, so leaving it never closes the storage its
        root and the other tenants still use, and never leaves it open after they are gone.
        """
        await self._context.storage.close()

    async def __aenter__(self) -> Billing:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def for_tenant(self, tenant_id: str) -> Billing:
        """The same billing, scoped to one tenant: every call reads and writes only its rows."""
        if not self._context.multi_tenant:
            raise ConfigurationError('for_tenant needs create_billing(..., tenancy="multi")')
        root = self._root or self
        context = ServiceContext(
            storage=self._context.storage,
            provider=self._context.provider,
            clock=self._context.clock,
            events=self._context.events,
            livemode=self._context.livemode,
            tenant_id=check.tenant_id(tenant_id),
            multi_tenant=True,
            settings=self._context.settings,
        )
        return Billing(context, root=root)

    def on(self, event_type: str, handler: EventHandler) -> None:
        """Call ``handler`` after each committed ``event_type`` (``"*"``: every event).

        A handler that raises is logged and never breaks the billing call. A name qzpay
        never emits (``"payment.succeded"``) is a ``ValidationError`` naming the closest
        real one, so a typo fails here instead of never firing; ``docs/events.md`` lists
        them all.
        """
        self._context.events.subscribe(check_event_name(event_type), handler)
