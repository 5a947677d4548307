"""Promo codes: what customers type at checkout, and their redemption on a subscription.

A code takes a percentage off (a ``Decimal``, rounded once by ``qzpay.money``), a fixed
amount in one currency, or gives free trial days. When it applies is the domain's
(``qzpay.domain.redemption_rules``), what it takes off too (``qzpay.domain.discounts``);
this module reads what those rules need and counts a redemption atomically
(``qzpay.services.redemptions``) in the caller's transaction.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Final
from uuid import UUID

import attrs

from qzpay import money
from qzpay import validation as check
from qzpay.contracts.filters import one_of
from qzpay.contracts.storage import Page, StorageTransaction
from qzpay.domain.catalog import Plan, Price
from qzpay.domain.customers import Customer
from qzpay.domain.discounts import PromoCheck, discount
from qzpay.domain.enums import DiscountType, PromoDuration
from qzpay.domain.payments import Payment
from qzpay.domain.promotions import PromoCode, PromoCodeUsage
from qzpay.domain.redemption_rules import PAID_STATUSES, PromoReason, refusal, refusal_error
from qzpay.errors import ConflictError, NotFoundError, ValidationError
from qzpay.ids import new_id
from qzpay.services import idempotency
from qzpay.services.catalog import MAX_TRIAL_DAYS
from qzpay.services.context import ServiceContext, UnitOfWork, missing, require
from qzpay.services.redemptions import redeem
from qzpay.timestamps import aware_utc

_CODE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_DISCOUNTS: Final = ("percent_off", "amount_off", "trial_days")


def normalized_code(value: object, *, field: str = "code") -> str:
    """``value`` upper-cased, if it can be a code: 1-64 ASCII letters, digits, ``_`` or ``-``.

    Codes are case-insensitive (a customer types ``save20`` for ``SAVE20``), so they are
    stored and looked up upper-cased. ASCII only: ``str.upper`` maps some other letters onto
    ASCII ones (``"ſ".upper() == "S"``), which would make two different texts one code.

    >>> normalized_code("save-20")
    'SAVE-20'
    """
    if not isinstance(value, str) or not _CODE.fullmatch(value):
        raise ValidationError(
            "must be 1-64 characters of ASCII letters, digits, '_' or '-'",
            field=field,
            rule="code_format",
        )
    return value.upper()


@attrs.frozen(kw_only=True)
class Redemption:
    """A code counted for one subscription: what it takes off its first charge, or its trial.

    ``discount`` is in the price's minor units (0 for a trial code); ``usage`` is the
    ``promo_code_usage`` row written in the caller's transaction; ``promo_code`` the code
    as it is after counting (``times_redeemed`` moved on).
    """

    promo_code: PromoCode
    discount: int
    trial_days: int | None
    usage: PromoCodeUsage


class PromoCodesService:
    """``billing.promo_codes``: create, read, list, deactivate and validate promo codes.

    >>> import anyio
    >>> from decimal import Decimal
    >>> from qzpay import create_billing
    >>> from qzpay.adapters.memory import MemoryStorage
    >>> from qzpay.adapters.fake import FakeProvider
    >>> async def main() -> tuple[bool, int]:
    ...     async with create_billing(storage=MemoryStorage(), provider=FakeProvider()) as billing:
    ...         ann = await billing.customers.create(email="ann@example.com")
    ...         plan = await billing.plans.create(name="Pro")
    ...         price = await billing.prices.create(
    ...             plan_id=plan.id, unit_amount=2999, currency="USD", interval="month"
    ...         )
    ...         await billing.promo_codes.create(code="SAVE15", percent_off=Decimal("15"))
    ...         check = await billing.promo_codes.validate(
    ...             "save15", customer_id=ann.id, price_id=price.id
    ...         )
    ...         return check.valid, check.discount
    >>> anyio.run(main)
    (True, 450)
    """

    def __init__(self, context: ServiceContext) -> None:
        self._context = context

    async def create(
        self,
        *,
        code: str,
        percent_off: Decimal | None = None,
        amount_off: int | None = None,
        currency: str | None = None,
        trial_days: int | None = None,
        duration: PromoDuration | str = "once",
        duration_in_periods: int | None = None,
        max_redemptions: int | None = None,
        max_redemptions_per_customer: int | None = None,
        expires_at: datetime | None = None,
        plan_ids: list[UUID | str] | tuple[UUID | str, ...] | None = None,
        first_time_only: bool = False,
        minimum_amount: int | None = None,
        metadata: dict[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> PromoCode:
        """Create a code; exactly one of ``percent_off``, ``amount_off`` (with ``currency``)
        or ``trial_days``. ``code`` is unique among live codes, whatever its case."""
        text = normalized_code(code)
        given = {"percent_off": percent_off, "amount_off": amount_off, "trial_days": trial_days}
        chosen = [name for name in _DISCOUNTS if given[name] is not None]
        if len(chosen) != 1:
            raise ValidationError(
                "give exactly one of percent_off, amount_off or trial_days",
                field=", ".join(chosen or _DISCOUNTS),
                rule="exactly_one_discount",
            )
        code_currency = None if currency is None else money.currency(currency).code
        percent: Decimal | None = None
        amount: int | None = None
        days: int | None = None
        if percent_off is not None:
            kind = DiscountType.PERCENTAGE
            percent = _percent(percent_off)
        elif amount_off is not None:
            kind = DiscountType.FIXED_AMOUNT
            amount = money.amount(amount_off, field="amount_off", minimum=1)
        else:
            kind = DiscountType.FREE_TRIAL_DAYS
            days = check.integer(trial_days, field="trial_days", minimum=1, maximum=MAX_TRIAL_DAYS)
        lasts = _duration(duration)
        periods = _periods(lasts, duration_in_periods)
        if kind is DiscountType.FREE_TRIAL_DAYS and lasts is not PromoDuration.ONCE:
            raise ValidationError(
                "a trial code gives its days once: leave duration 'once'",
                field="duration",
                rule="trial_once",
            )
        minimum = (
            None if minimum_amount is None else money.amount(minimum_amount, field="minimum_amount")
        )
        _check_currency(code_currency, amount_off=amount, minimum_amount=minimum)
        limit = _optional_count(max_redemptions, field="max_redemptions")
        per_customer = _optional_count(
            max_redemptions_per_customer, field="max_redemptions_per_customer"
        )
        expires = None if expires_at is None else aware_utc(expires_at, field="expires_at")
        if expires is not None and expires <= self._context.now():
            raise ValidationError("must be in the future", field="expires_at", rule="future")
        plans = _plan_ids(plan_ids)
        first_time = check.boolean(first_time_only, field="first_time_only")
        code_metadata = check.metadata(metadata)
        keyed = idempotency.keyed(
            self._context,
            "promo_codes.create",
            idempotency_key,
            code=text,
            percent_off=percent,
            amount_off=amount,
            currency=code_currency,
            trial_days=days,
            duration=lasts,
            duration_in_periods=periods,
            max_redemptions=limit,
            max_redemptions_per_customer=per_customer,
            expires_at=expires,
            plan_ids=plans,
            first_time_only=first_time,
            minimum_amount=minimum,
            metadata=code_metadata,
        )
        async with self._context.unit_of_work() as uow:
            claim = await idempotency.claim(uow, keyed, PromoCode)
            if claim.replay is not None:
                return claim.replay
            claim.raise_if_in_progress()
            for plan_id in plans:
                if await uow.tx.get(Plan, plan_id) is None:
                    raise missing(uow.tx, Plan, plan_id, field="plan_ids")
            if await uow.tx.find(PromoCode, code=text) is not None:
                raise _taken(text)
            promo = PromoCode(
                id=new_id(),
                livemode=uow.scope.livemode,
                tenant_id=uow.scope.tenant_id,
                code=text,
                discount_type=kind,
                percent_off=percent,
                amount_off=amount,
                currency=code_currency,
                trial_days=days,
                duration=lasts,
                duration_in_periods=periods,
                minimum_amount=minimum,
                first_time_only=first_time,
                max_redemptions=limit,
                max_redemptions_per_customer=per_customer,
                expires_at=expires,
                plan_ids=tuple(str(plan_id) for plan_id in plans),
                metadata=code_metadata,
                created_at=uow.now,
                updated_at=uow.now,
            )
            # The unique key decides between two concurrent creates; the find above only
            # gives the common case its clear message.
            await uow.tx.insert(promo)
            await uow.record(
                "promo_code.created", promo, changes={"code": text, "discount_type": str(kind)}
            )
            await idempotency.complete(uow, keyed, promo)
        return promo

    async def get(self, promo_code_id: UUID | str) -> PromoCode:
        """The code, or ``NotFoundError``."""
        promo: PromoCode = await self._context.read(
            PromoCode,
            check.identifier(promo_code_id, field="promo_code_id"),
            field="promo_code_id",
        )
        return promo

    async def get_by_code(self, code: str) -> PromoCode:
        """The live code spelled ``code`` in any case, or ``NotFoundError``."""
        text = normalized_code(code)
        async with self._context.unit_of_work(readonly=True) as uow:
            promo = await uow.tx.find(PromoCode, code=text)
        if promo is None:
            raise NotFoundError(f"no promo code {text!r}", field="code", rule="exists")
        return promo

    async def list(
        self, *, limit: int = 20, cursor: str | None = None, active: bool | None = None
    ) -> Page[PromoCode]:
        """Codes newest first; ``active`` filters deactivated ones in or out."""
        filters = {} if active is None else {"active": check.boolean(active, field="active")}
        async with self._context.unit_of_work(readonly=True) as uow:
            return await uow.tx.list(PromoCode, filters=filters, limit=limit, cursor=cursor)

    async def deactivate(
        self, promo_code_id: UUID | str, *, idempotency_key: str | None = None
    ) -> PromoCode:
        """Stop the code applying from now on; its redemptions so far stay.

        The code keeps its name (as Stripe's promotion codes do): a deactivated ``SAVE20``
        is reported as ``inactive``, never silently replaced by a new code of that name.
        Deactivating an inactive code changes nothing and emits nothing.
        """
        entity_id = check.identifier(promo_code_id, field="promo_code_id")
        keyed = idempotency.keyed(
            self._context, "promo_codes.deactivate", idempotency_key, promo_code_id=entity_id
        )
        async with self._context.unit_of_work() as uow:
            claim = await idempotency.claim(uow, keyed, PromoCode)
            if claim.replay is not None:
                return claim.replay
            claim.raise_if_in_progress()
            promo: PromoCode = await require(uow.tx, PromoCode, entity_id, field="promo_code_id")
            if promo.active:
                promo = await uow.tx.update(attrs.evolve(promo, active=False, updated_at=uow.now))
                await uow.record("promo_code.deactivated", promo, changes={"active": [True, False]})
            await idempotency.complete(uow, keyed, promo)
        return promo

    async def validate(
        self,
        code: str,
        *,
        customer_id: UUID | str,
        price_id: UUID | str,
        amount: int | None = None,
    ) -> PromoCheck:
        """Whether ``code`` applies to ``customer_id`` buying ``price_id``, and its discount.

        ``amount`` (minor units of the price's currency) defaults to the price's
        ``unit_amount``. A code that does not apply is an answer, not an error: ``valid``
        is ``False`` and ``reason`` says why (``qzpay.domain.redemption_rules.PromoReason``).
        Writes nothing: the code is counted only when a subscription redeems it.
        """
        text = normalized_code(code)
        customer_key = check.identifier(customer_id, field="customer_id")
        price_key = check.identifier(price_id, field="price_id")
        value = None if amount is None else money.amount(amount)
        async with self._context.unit_of_work(readonly=True) as uow:
            customer, price = await uow.tx.get_many((Customer, customer_key), (Price, price_key))
            if customer is None:
                raise missing(uow.tx, Customer, customer_key, field="customer_id")
            if price is None:
                raise missing(uow.tx, Price, price_key, field="price_id")
            value = price.unit_amount if value is None else value
            promo, reason = await _check(uow, text, customer, price, value)
        if reason is not None:
            return PromoCheck(
                valid=False, discount=0, reason=reason, promo_code=promo, trial_days=None
            )
        assert promo is not None  # no reason: a code was found
        return PromoCheck(
            valid=True,
            discount=discount(promo, amount=value, currency=price.currency),
            reason=None,
            promo_code=promo,
            trial_days=promo.trial_days,
        )


async def redeem_for_subscription(
    uow: UnitOfWork,
    *,
    code: str,
    customer: Customer,
    price: Price,
    amount: int,
    subscription_id: UUID,
) -> Redemption:
    """Count ``code`` for ``subscription_id`` in the caller's unit of work; its discount.

    The same rules as ``validate``, raised as errors (field ``promo_code``, the reason as
    rule: ``ValidationError`` when the code does not fit, ``InvalidStateError`` when its
    state refuses). The count is atomic (a bounded increment: a code limited to 10 is
    redeemed 10 times however many try at once) and belongs to the caller's transaction, so
    a failure later in it counts nothing. The subscription row must already be inserted in
    that transaction: the usage row refers to it. ``amount`` is what the first charge would
    be without the code (minor units of ``price.currency``).
    """
    text = normalized_code(code, field="promo_code")
    value = money.amount(amount)
    promo, reason = await _check(uow, text, customer, price, value)
    if reason is not None:
        raise refusal_error(text, reason, promo)
    assert promo is not None  # no reason: a code was found
    taken = discount(promo, amount=value, currency=price.currency)
    usage = PromoCodeUsage(
        id=new_id(),
        livemode=uow.scope.livemode,
        tenant_id=uow.scope.tenant_id,
        promo_code_id=promo.id,
        customer_id=customer.id,
        subscription_id=subscription_id,
        discount_amount=taken,
        currency=price.currency,
        created_at=uow.now,
    )
    counted = await redeem(uow.tx, usage)
    await uow.record(
        "promo_code.redeemed",
        counted,
        changes={
            "usage_id": str(usage.id),
            "customer_id": str(customer.id),
            "subscription_id": str(subscription_id),
            "discount": taken,
            "currency": price.currency,
        },
    )
    return Redemption(promo_code=counted, discount=taken, trial_days=promo.trial_days, usage=usage)


async def _check(
    uow: UnitOfWork, text: str, customer: Customer, price: Price, amount: int
) -> tuple[PromoCode | None, PromoReason | None]:
    """The code spelled ``text`` and the first rule it breaks, reading only what is needed."""
    tx = uow.tx
    promo = await tx.find(PromoCode, code=text)
    redeemed = 0
    has_paid = False
    if promo is not None:
        if promo.max_redemptions_per_customer is not None:
            redeemed = await _redeemed_by(tx, promo, customer)
        if promo.first_time_only:
            has_paid = await _has_paid(tx, customer)
    reason = refusal(
        promo,
        now=uow.now,
        plan_id=price.plan_id,
        currency=price.currency,
        amount=amount,
        redeemed_by_customer=redeemed,
        has_paid=has_paid,
    )
    return promo, reason


async def _redeemed_by(tx: StorageTransaction, promo: PromoCode, customer: Customer) -> int:
    return await tx.count(
        PromoCodeUsage, filters={"promo_code_id": promo.id, "customer_id": customer.id}
    )


async def _has_paid(tx: StorageTransaction, customer: Customer) -> bool:
    paid = await tx.count(
        Payment, filters={"customer_id": customer.id, "status": one_of(PAID_STATUSES)}
    )
    return paid > 0


def _taken(text: str) -> ConflictError:
    return ConflictError(f"a live promo code {text!r} already exists", field="code", rule="unique")


def _percent(value: object) -> Decimal:
    """A percentage is a ``Decimal`` (as everywhere in qzpay): a float is not one, since 0.1
    is not one tenth in binary, and an int is refused too, so one type means one value."""
    if not isinstance(value, Decimal):
        raise ValidationError(
            f"must be a Decimal such as Decimal('20'), got {type(value).__name__}",
            field="percent_off",
            rule="decimal",
        )
    if not value.is_finite() or not 0 < value <= 100:
        raise ValidationError(
            "must be more than 0 and at most 100", field="percent_off", rule="percent_range"
        )
    return value


def _duration(value: object) -> PromoDuration:
    if isinstance(value, str):
        try:
            return PromoDuration(value)
        except ValueError:
            pass
    raise ValidationError(
        "must be one of once, repeating, forever", field="duration", rule="duration"
    )


def _periods(duration: PromoDuration, value: object) -> int | None:
    if duration is PromoDuration.REPEATING:
        if value is None:
            raise ValidationError(
                "a repeating code needs duration_in_periods",
                field="duration_in_periods",
                rule="required",
            )
        return check.integer(value, field="duration_in_periods", minimum=1, maximum=1200)
    if value is not None:
        raise ValidationError(
            f"only a repeating code has duration_in_periods (this one is {duration})",
            field="duration_in_periods",
            rule="only_repeating",
        )
    return None


def _check_currency(
    currency: str | None, *, amount_off: int | None, minimum_amount: int | None
) -> None:
    """A currency is what a fixed amount or a minimum is counted in; nothing else has one."""
    if amount_off is not None:
        needs: str | None = "amount_off"
    elif minimum_amount is not None:
        needs = "minimum_amount"
    else:
        needs = None
    if needs is not None and currency is None:
        raise ValidationError(
            f"{needs} is in minor units of a currency: give currency",
            field="currency",
            rule="required",
        )
    if needs is None and currency is not None:
        raise ValidationError(
            "only a fixed amount_off or a minimum_amount has a currency",
            field="currency",
            rule="currency_unused",
        )


def _optional_count(value: object, *, field: str) -> int | None:
    return None if value is None else check.integer(value, field=field, minimum=1)


def _plan_ids(value: object) -> tuple[UUID, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ValidationError("must be a list of plan ids", field="plan_ids", rule="id_list")
    if not value:
        raise ValidationError(
            "must name at least one plan (None: every plan)", field="plan_ids", rule="id_list"
        )
    return tuple(dict.fromkeys(check.identifier(item, field="plan_ids") for item in value))
