"""The catalog: plans (what a customer gets) and prices (what it costs)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from qzpay import money
from qzpay import validation as check
from qzpay.contracts.storage import Page
from qzpay.domain.catalog import Plan, Price
from qzpay.domain.enums import Interval
from qzpay.errors import ValidationError
from qzpay.ids import new_id
from qzpay.services import idempotency
from qzpay.services.context import ServiceContext, require
from qzpay.validation import UNSET, Unset

MAX_TRIAL_DAYS = 730


def interval(value: object) -> Interval:
    try:
        return Interval(str(value))
    except ValueError:
        raise ValidationError(
            "must be one of day, week, month, year", field="interval", rule="interval"
        ) from None


def trial_days(value: object, *, field: str = "trial_days") -> int | None:
    return None if value is None else check.integer(value, field=field, maximum=MAX_TRIAL_DAYS)


class PlansService:
    """``billing.plans``: product tiers with entitlement keys and limits.

    >>> import anyio
    >>> from qzpay import create_billing
    >>> from qzpay.adapters.memory import MemoryStorage
    >>> from qzpay.adapters.fake import FakeProvider
    >>> async def main() -> dict[str, int]:
    ...     async with create_billing(storage=MemoryStorage(), provider=FakeProvider()) as billing:
    ...         plan = await billing.plans.create(name="Pro", entitlements=["reports"], limits={"seats": 5})
    ...         return dict(plan.limits)
    >>> anyio.run(main)
    {'seats': 5}
    """

    def __init__(self, context: ServiceContext) -> None:
        self._context = context

    async def create(
        self,
        *,
        name: str,
        description: str | None = None,
        entitlements: list[str] | tuple[str, ...] = (),
        limits: dict[str, int] | None = None,
        metadata: dict[str, str] | None = None,
        active: bool = True,
        idempotency_key: str | None = None,
    ) -> Plan:
        """Create a plan; with ``idempotency_key`` a retry returns the first call's plan."""
        plan_name = check.text(name, field="name", max_length=200)
        plan_description = check.optional_text(description, field="description")
        plan_entitlements = check.keys(entitlements, field="entitlements")
        plan_limits = check.limits(limits)
        plan_metadata = check.metadata(metadata)
        plan_active = check.boolean(active, field="active")
        keyed = idempotency.keyed(
            self._context,
            "plans.create",
            idempotency_key,
            name=plan_name,
            description=plan_description,
            entitlements=plan_entitlements,
            limits=plan_limits,
            metadata=plan_metadata,
            active=plan_active,
        )
        async with self._context.unit_of_work() as uow:
            claim = await idempotency.claim(uow, keyed, Plan)
            if claim.replay is not None:
                return claim.replay
            claim.raise_if_in_progress()
            plan = Plan(
                id=new_id(),
                livemode=uow.scope.livemode,
                tenant_id=uow.scope.tenant_id,
                name=plan_name,
                description=plan_description,
                active=plan_active,
                entitlements=plan_entitlements,
                limits=plan_limits,
                metadata=plan_metadata,
                created_at=uow.now,
                updated_at=uow.now,
            )
            await uow.tx.insert(plan)
            await uow.record("plan.created", plan, changes={"name": plan_name})
            await idempotency.complete(uow, keyed, plan)
        return plan

    async def get(self, plan_id: UUID | str) -> Plan:
        plan: Plan = await self._context.read(
            Plan, check.identifier(plan_id, field="plan_id"), field="plan_id"
        )
        return plan

    async def update(
        self,
        plan_id: UUID | str,
        *,
        name: str | Unset = UNSET,
        description: str | Unset | None = UNSET,
        active: bool | Unset = UNSET,
        entitlements: list[str] | tuple[str, ...] | Unset = UNSET,
        limits: dict[str, int] | Unset = UNSET,
        metadata: dict[str, str] | Unset | None = UNSET,
        idempotency_key: str | None = None,
    ) -> Plan:
        """Change the given fields; with ``idempotency_key`` a retry returns the plan as the
        first call left it."""
        entity_id = check.identifier(plan_id, field="plan_id")
        changes: dict[str, Any] = {}
        if check.given(name):
            changes["name"] = check.text(name, field="name", max_length=200)
        if check.given(description):
            changes["description"] = check.optional_text(description, field="description")
        if check.given(active):
            changes["active"] = check.boolean(active, field="active")
        if check.given(entitlements):
            changes["entitlements"] = check.keys(entitlements, field="entitlements")
        if check.given(limits):
            changes["limits"] = check.limits(limits)
        if check.given(metadata):
            changes["metadata"] = check.metadata(metadata)
        keyed = idempotency.keyed(
            self._context, "plans.update", idempotency_key, plan_id=entity_id, **changes
        )
        return await idempotency.change(
            self._context,
            Plan,
            entity_id,
            changes,
            field="plan_id",
            event="plan.updated",
            keyed=keyed,
        )

    async def list(
        self, *, limit: int = 20, cursor: str | None = None, active: bool | None = None
    ) -> Page[Plan]:
        filters = {} if active is None else {"active": check.boolean(active, field="active")}
        async with self._context.unit_of_work(readonly=True) as uow:
            return await uow.tx.list(Plan, filters=filters, limit=limit, cursor=cursor)


class PricesService:
    """``billing.prices``: amounts in minor units per interval; immutable once created.

    To change what a plan costs, create a new price and archive the old one
    (``update(price_id, active=False)``), as in Stripe: existing subscriptions keep theirs.

    >>> import anyio
    >>> from qzpay import create_billing
    >>> from qzpay.adapters.memory import MemoryStorage
    >>> from qzpay.adapters.fake import FakeProvider
    >>> async def main() -> str:
    ...     async with create_billing(storage=MemoryStorage(), provider=FakeProvider()) as billing:
    ...         plan = await billing.plans.create(name="Pro")
    ...         price = await billing.prices.create(
    ...             plan_id=plan.id, unit_amount=2900, currency="usd", interval="month"
    ...         )
    ...         return f"{price.unit_amount} {price.currency} / {price.interval}"
    >>> anyio.run(main)
    '2900 USD / month'
    """

    def __init__(self, context: ServiceContext) -> None:
        self._context = context

    async def create(
        self,
        *,
        plan_id: UUID | str,
        unit_amount: int,
        currency: str,
        interval: Interval | str,
        interval_count: int = 1,
        trial_days: int | None = None,
        nickname: str | None = None,
        metadata: dict[str, str] | None = None,
        active: bool = True,
        idempotency_key: str | None = None,
        provider_price_id: str | None = None,
    ) -> Price:
        """Create a price of a plan; with ``idempotency_key`` a retry returns the first
        call's price.

        ``provider_price_id`` is the same price at the billing's provider (Stripe's
        ``price_...``, a MercadoPago preapproval plan id), which is what a
        ``subscriptions.create(..., managed_by="provider")`` of this price is billed on.
        qzpay does not create it there: it must already exist, at the same amount and
        interval.
        """
        entity_plan_id = check.identifier(plan_id, field="plan_id")
        price_amount = money.amount(unit_amount, field="unit_amount")
        price_currency = money.currency(currency).code
        price_interval = _interval(interval)
        price_count = check.integer(interval_count, field="interval_count", minimum=1, maximum=365)
        price_trial = _trial_days(trial_days)
        price_nickname = check.optional_text(nickname, field="nickname", max_length=200)
        price_metadata = check.metadata(metadata)
        price_active = check.boolean(active, field="active")
        at_provider = check.optional_text(
            provider_price_id, field="provider_price_id", max_length=255
        )
        keyed = idempotency.keyed(
            self._context,
            "prices.create",
            idempotency_key,
            plan_id=entity_plan_id,
            unit_amount=price_amount,
            currency=price_currency,
            interval=price_interval,
            interval_count=price_count,
            trial_days=price_trial,
            nickname=price_nickname,
            metadata=price_metadata,
            active=price_active,
            **({"provider_price_id": at_provider} if at_provider is not None else {}),
        )
        async with self._context.unit_of_work() as uow:
            claim = await idempotency.claim(uow, keyed, Price)
            if claim.replay is not None:
                return claim.replay
            claim.raise_if_in_progress()
            await require(uow.tx, Plan, entity_plan_id, field="plan_id")
            price = Price(
                id=new_id(),
                livemode=uow.scope.livemode,
                tenant_id=uow.scope.tenant_id,
                plan_id=entity_plan_id,
                unit_amount=price_amount,
                currency=price_currency,
                interval=price_interval,
                interval_count=price_count,
                trial_days=price_trial,
                nickname=price_nickname,
                active=price_active,
                metadata=price_metadata,
                provider=None if at_provider is None else self._context.provider.name,
                provider_id=at_provider,
                created_at=uow.now,
                updated_at=uow.now,
            )
            await uow.tx.insert(price)
            await uow.record(
                "price.created",
                price,
                changes={"unit_amount": price_amount, "currency": price_currency},
            )
            await idempotency.complete(uow, keyed, price)
        return price

    async def get(self, price_id: UUID | str) -> Price:
        price: Price = await self._context.read(
            Price, check.identifier(price_id, field="price_id"), field="price_id"
        )
        return price

    async def update(
        self,
        price_id: UUID | str,
        *,
        active: bool | Unset = UNSET,
        nickname: str | Unset | None = UNSET,
        trial_days: int | Unset | None = UNSET,
        metadata: dict[str, str] | Unset | None = UNSET,
        idempotency_key: str | None = None,
    ) -> Price:
        """Change what may change; amount, currency and interval never do.

        With ``idempotency_key``, a retry returns the price as the first call left it.
        """
        entity_id = check.identifier(price_id, field="price_id")
        changes: dict[str, Any] = {}
        if check.given(active):
            changes["active"] = check.boolean(active, field="active")
        if check.given(nickname):
            changes["nickname"] = check.optional_text(nickname, field="nickname", max_length=200)
        if check.given(trial_days):
            changes["trial_days"] = _trial_days(trial_days)
        if check.given(metadata):
            changes["metadata"] = check.metadata(metadata)
        keyed = idempotency.keyed(
            self._context, "prices.update", idempotency_key, price_id=entity_id, **changes
        )
        return await idempotency.change(
            self._context,
            Price,
            entity_id,
            changes,
            field="price_id",
            event="price.updated",
            keyed=keyed,
        )

    async def list(
        self,
        *,
        plan_id: UUID | str | None = None,
        active: bool | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> Page[Price]:
        filters: dict[str, object] = {}
        if plan_id is not None:
            filters["plan_id"] = check.identifier(plan_id, field="plan_id")
        if active is not None:
            filters["active"] = check.boolean(active, field="active")
        async with self._context.unit_of_work(readonly=True) as uow:
            return await uow.tx.list(Price, filters=filters, limit=limit, cursor=cursor)


_interval = interval
_trial_days = trial_days
