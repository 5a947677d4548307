"""billing.promo_codes: codes of every kind, every reason a code does not apply, and the
atomic redemption a subscription makes, on every adapter."""

from __future__ import annotations

import decimal
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from qzpay import (
    Billing,
    ConflictError,
    Event,
    IdempotencyError,
    InvalidStateError,
    NotFoundError,
    QZPayError,
    Scope,
    ValidationError,
)
from qzpay.adapters.clock import FrozenClock
from qzpay.conformance import entities
from qzpay.domain.catalog import Plan, Price
from qzpay.domain.customers import Customer
from qzpay.domain.discounts import discount
from qzpay.domain.enums import DiscountType, PaymentStatus, PromoDuration
from qzpay.domain.promotions import PromoCode, PromoCodeUsage
from qzpay.domain.records import AuditLog, IdempotencyKey
from qzpay.domain.subscriptions import Subscription
from qzpay.services.context import UnitOfWork
from qzpay.services.promo_codes import Redemption, redeem_for_subscription

pytestmark = pytest.mark.anyio
TEST = Scope(livemode=False)
RowCounter = Callable[[Billing, type[Any]], Awaitable[int]]
MakeBilling = Callable[..., Billing]


async def _shop(billing: Billing, unit_amount: int = 2900) -> tuple[Customer, Plan, Price]:
    customer = await billing.customers.create(email="ann@example.com")
    plan = await billing.plans.create(name="Pro")
    price = await billing.prices.create(
        plan_id=plan.id, unit_amount=unit_amount, currency="USD", interval="month"
    )
    return customer, plan, price


async def _redeem(
    billing: Billing, code: str, customer: Customer, price: Price, *, amount: int | None = None
) -> Redemption:
    """What ``subscriptions.create(promo_code=...)`` does: the subscription row first, then
    the redemption, in one unit of work."""
    async with billing._context.unit_of_work() as uow:
        return await _redeem_in(uow, code, customer, price, amount=amount)


async def _redeem_in(
    uow: UnitOfWork, code: str, customer: Customer, price: Price, *, amount: int | None = None
) -> Redemption:
    subscription = entities.subscription(uow.scope, customer, price)
    await uow.tx.insert(subscription)
    return await redeem_for_subscription(
        uow,
        code=code,
        customer=customer,
        price=price,
        amount=price.unit_amount if amount is None else amount,
        subscription_id=subscription.id,
    )


# -- create, read, list, deactivate --------------------------------------------------------


async def test_each_kind_of_code_is_created_and_read_back(billing: Billing) -> None:
    percent = await billing.promo_codes.create(
        code="save20",
        percent_off=Decimal("20"),
        duration="repeating",
        duration_in_periods=3,
        max_redemptions=100,
        max_redemptions_per_customer=1,
    )
    fixed = await billing.promo_codes.create(code="TENOFF", amount_off=1000, currency="usd")
    trial = await billing.promo_codes.create(code="TRIAL30", trial_days=30)

    assert percent.code == "SAVE20"
    assert percent.discount_type == DiscountType.PERCENTAGE
    assert percent.percent_off == Decimal("20")
    assert percent.duration == PromoDuration.REPEATING
    assert percent.duration_in_periods == 3
    assert (fixed.discount_type, fixed.amount_off, fixed.currency) == ("fixed_amount", 1000, "USD")
    assert (trial.discount_type, trial.trial_days) == ("free_trial_days", 30)
    for code in (percent, fixed, trial):
        assert await billing.promo_codes.get(code.id) == code
        assert await billing.promo_codes.get(str(code.id)) == code
    assert await billing.promo_codes.get_by_code("Save20") == percent
    assert await billing.promo_codes.get_by_code("tenoff") == fixed
    listed = await billing.promo_codes.list()
    assert [c.code for c in listed] == ["TRIAL30", "TENOFF", "SAVE20"]


async def test_a_code_keeps_its_rules_exactly(billing: Billing, clock: FrozenClock) -> None:
    _, plan, _ = await _shop(billing)
    expires = clock.now() + timedelta(days=30)

    code = await billing.promo_codes.create(
        code="NEW-ONLY_1",
        percent_off=Decimal("12.5"),
        duration="forever",
        expires_at=expires,
        plan_ids=[plan.id, str(plan.id)],
        first_time_only=True,
        minimum_amount=5000,
        currency="USD",
        metadata={"campaign": "spring"},
    )

    stored = await billing.promo_codes.get(code.id)
    assert stored == code
    assert stored.percent_off == Decimal("12.5")
    assert stored.expires_at == expires
    assert stored.plan_ids == (str(plan.id),)
    assert stored.first_time_only is True
    assert (stored.minimum_amount, stored.currency) == (5000, "USD")
    assert dict(stored.metadata) == {"campaign": "spring"}


async def test_codes_are_announced_and_audited(billing: Billing) -> None:
    events: list[Event] = []
    billing.on("*", events.append)

    code = await billing.promo_codes.create(code="SAVE20", percent_off=Decimal("20"))
    deactivated = await billing.promo_codes.deactivate(code.id)
    again = await billing.promo_codes.deactivate(code.id)

    assert deactivated.active is False
    assert again == deactivated
    assert [e.type for e in events] == ["promo_code.created", "promo_code.deactivated"]
    assert events[1].data == deactivated
    audit = await billing.audit.list(entity_id=code.id)
    assert [a.action for a in audit] == ["deactivated", "created"]
    assert (await billing.promo_codes.get(code.id)).active is False
    assert [c.code for c in await billing.promo_codes.list(active=False)] == ["SAVE20"]
    assert len(await billing.promo_codes.list(active=True)) == 0


async def test_a_code_is_unique_whatever_its_case(billing: Billing, count_rows: RowCounter) -> None:
    await billing.promo_codes.create(code="SAVE20", percent_off=Decimal("20"))

    with pytest.raises(ConflictError) as error:
        await billing.promo_codes.create(code="save20", amount_off=100, currency="USD")

    assert (error.value.field, error.value.rule) == ("code", "unique")
    assert await count_rows(billing, PromoCode) == 1


async def test_concurrent_creates_of_one_code_store_it_once(
    billing: Billing, count_rows: RowCounter
) -> None:
    outcomes: list[str] = []

    async def create(index: int) -> None:
        try:
            await billing.promo_codes.create(code="RACE", percent_off=Decimal(index + 1))
            outcomes.append("created")
        except ConflictError as error:
            outcomes.append(str(error.field))

    async with anyio.create_task_group() as group:
        for index in range(8):
            group.start_soon(create, index)

    assert sorted(outcomes) == ["code"] * 7 + ["created"]
    assert await count_rows(billing, PromoCode) == 1


async def test_unknown_codes_and_ids_are_not_found(billing: Billing) -> None:
    with pytest.raises(NotFoundError) as by_id:
        await billing.promo_codes.get(uuid.uuid4())
    with pytest.raises(NotFoundError) as by_code:
        await billing.promo_codes.get_by_code("NOPE")
    with pytest.raises(NotFoundError) as deactivating:
        await billing.promo_codes.deactivate(uuid.uuid4())
    with pytest.raises(ValidationError) as malformed:
        await billing.promo_codes.get_by_code("no spaces")

    assert by_id.value.field == deactivating.value.field == "promo_code_id"
    assert by_code.value.field == "code"
    assert (malformed.value.field, malformed.value.rule) == ("code", "code_format")


BAD_CREATES: list[tuple[dict[str, Any], str, str]] = [
    ({"code": "", "percent_off": Decimal("10")}, "code", "code_format"),
    ({"code": "SAVE 20", "percent_off": Decimal("10")}, "code", "code_format"),
    ({"code": "X" * 65, "percent_off": Decimal("10")}, "code", "code_format"),
    ({"code": "SAVE\n", "percent_off": Decimal("10")}, "code", "code_format"),
    ({"code": "ſAVE", "percent_off": Decimal("10")}, "code", "code_format"),
    ({"code": 20, "percent_off": Decimal("10")}, "code", "code_format"),
    ({"code": "NONE"}, "percent_off, amount_off, trial_days", "exactly_one_discount"),
    (
        {"code": "TWO", "percent_off": Decimal("10"), "trial_days": 3},
        "percent_off, trial_days",
        "exactly_one_discount",
    ),
    ({"code": "F", "percent_off": 10.0}, "percent_off", "decimal"),
    ({"code": "F", "percent_off": "10"}, "percent_off", "decimal"),
    ({"code": "F", "percent_off": True}, "percent_off", "decimal"),
    ({"code": "F", "percent_off": 20}, "percent_off", "decimal"),
    ({"code": "F", "percent_off": Decimal("0")}, "percent_off", "percent_range"),
    ({"code": "F", "percent_off": Decimal("-5")}, "percent_off", "percent_range"),
    ({"code": "F", "percent_off": Decimal("100.01")}, "percent_off", "percent_range"),
    ({"code": "F", "percent_off": Decimal("NaN")}, "percent_off", "percent_range"),
    ({"code": "F", "percent_off": Decimal("Infinity")}, "percent_off", "percent_range"),
    ({"code": "F", "amount_off": 1000}, "currency", "required"),
    ({"code": "F", "amount_off": 0, "currency": "USD"}, "amount_off", "must be between 1 and"),
    ({"code": "F", "amount_off": 9.5, "currency": "USD"}, "amount_off", "must be an int"),
    ({"code": "F", "amount_off": 100, "currency": "XYZ"}, "currency", "must be a supported"),
    ({"code": "F", "trial_days": 0}, "trial_days", "int_range"),
    ({"code": "F", "trial_days": 731}, "trial_days", "int_range"),
    ({"code": "F", "trial_days": 7, "duration": "forever"}, "duration", "trial_once"),
    ({"code": "F", "percent_off": Decimal("5"), "duration": "daily"}, "duration", "duration"),
    (
        {"code": "F", "percent_off": Decimal("5"), "duration": "repeating"},
        "duration_in_periods",
        "required",
    ),
    (
        {
            "code": "F",
            "percent_off": Decimal("5"),
            "duration": "repeating",
            "duration_in_periods": 0,
        },
        "duration_in_periods",
        "int_range",
    ),
    (
        {"code": "F", "percent_off": Decimal("5"), "duration_in_periods": 3},
        "duration_in_periods",
        "only_repeating",
    ),
    ({"code": "F", "percent_off": Decimal("5"), "minimum_amount": 100}, "currency", "required"),
    (
        {"code": "F", "percent_off": Decimal("5"), "minimum_amount": -1, "currency": "USD"},
        "minimum_amount",
        "must be between 0 and",
    ),
    ({"code": "F", "percent_off": Decimal("5"), "currency": "USD"}, "currency", "currency_unused"),
    (
        {"code": "F", "percent_off": Decimal("5"), "max_redemptions": 0},
        "max_redemptions",
        "int_range",
    ),
    (
        {"code": "F", "percent_off": Decimal("5"), "max_redemptions_per_customer": -1},
        "max_redemptions_per_customer",
        "int_range",
    ),
    ({"code": "F", "percent_off": Decimal("5"), "plan_ids": []}, "plan_ids", "id_list"),
    ({"code": "F", "percent_off": Decimal("5"), "plan_ids": "abc"}, "plan_ids", "id_list"),
    ({"code": "F", "percent_off": Decimal("5"), "plan_ids": ["abc"]}, "plan_ids", "id_format"),
    ({"code": "F", "percent_off": Decimal("5"), "first_time_only": 1}, "first_time_only", "bool"),
    ({"code": "F", "percent_off": Decimal("5"), "metadata": {"k": 1}}, "metadata", "metadata"),
    ({"code": "F", "percent_off": Decimal("5"), "idempotency_key": ""}, "idempotency_key", ""),
]


@pytest.mark.parametrize(("arguments", "field", "rule"), BAD_CREATES)
async def test_a_bad_create_names_the_field_and_rule_and_writes_nothing(
    billing: Billing, count_rows: RowCounter, arguments: dict[str, Any], field: str, rule: str
) -> None:
    with pytest.raises(ValidationError) as error:
        await billing.promo_codes.create(**arguments)

    assert error.value.field == field
    assert rule in (error.value.rule or "")
    assert await count_rows(billing, PromoCode) == 0
    assert await count_rows(billing, AuditLog) == 0
    assert await count_rows(billing, IdempotencyKey) == 0


async def test_expiry_must_be_aware_and_in_the_future(
    billing: Billing, clock: FrozenClock, count_rows: RowCounter
) -> None:
    now = clock.now()
    for expires_at, rule in (
        (now, "future"),
        (now - timedelta(days=1), "future"),
        (now.replace(tzinfo=None) + timedelta(days=1), "must be timezone-aware"),
    ):
        with pytest.raises(ValidationError) as error:
            await billing.promo_codes.create(
                code="LATE", percent_off=Decimal("5"), expires_at=expires_at
            )
        assert (error.value.field, error.value.rule) == ("expires_at", rule)
    assert await count_rows(billing, PromoCode) == 0


async def test_a_code_for_an_unknown_plan_is_refused(
    billing: Billing, count_rows: RowCounter
) -> None:
    with pytest.raises(NotFoundError) as error:
        await billing.promo_codes.create(
            code="PLANS", percent_off=Decimal("5"), plan_ids=[uuid.uuid4()]
        )

    assert error.value.field == "plan_ids"
    assert await count_rows(billing, PromoCode) == 0


async def test_codes_belong_to_their_tenant(
    make_billing: MakeBilling, count_rows: RowCounter
) -> None:
    async with make_billing(tenancy="multi") as billing:
        acme, globex = billing.for_tenant("acme"), billing.for_tenant("globex")
        ann, _, price = await _shop(acme)
        bob, _, globex_price = await _shop(globex)
        ours = await acme.promo_codes.create(code="SAVE20", percent_off=Decimal("20"))
        theirs = await globex.promo_codes.create(code="save20", amount_off=100, currency="USD")

        await _redeem(acme, "SAVE20", ann, price)

        assert (await acme.promo_codes.get_by_code("SAVE20")).times_redeemed == 1
        assert await globex.promo_codes.get_by_code("SAVE20") == theirs
        with pytest.raises(NotFoundError):
            await globex.promo_codes.get(ours.id)
        with pytest.raises(NotFoundError) as error:
            await globex.promo_codes.validate("SAVE20", customer_id=ann.id, price_id=price.id)
        assert error.value.field == "customer_id"
        check = await globex.promo_codes.validate(
            "SAVE20", customer_id=bob.id, price_id=globex_price.id
        )
        assert (check.valid, check.discount) == (True, 100)
        assert await count_rows(globex, PromoCodeUsage) == 0


# -- idempotency ----------------------------------------------------------------------------


async def test_a_keyed_create_and_deactivate_answer_retries_from_the_first_result(
    billing: Billing, count_rows: RowCounter
) -> None:
    events: list[Event] = []
    billing.on("*", events.append)

    first = await billing.promo_codes.create(
        code="SAVE20", percent_off=Decimal("20"), idempotency_key="promo-1"
    )
    again = await billing.promo_codes.create(
        code="save20", percent_off=Decimal("20.0"), idempotency_key="promo-1"
    )
    with pytest.raises(IdempotencyError) as other:
        await billing.promo_codes.create(
            code="SAVE20", percent_off=Decimal("25"), idempotency_key="promo-1"
        )
    off = await billing.promo_codes.deactivate(first.id, idempotency_key="off-1")
    off_again = await billing.promo_codes.deactivate(first.id, idempotency_key="off-1")

    assert again == first
    assert (other.value.field, other.value.rule) == ("idempotency_key", "same_parameters")
    assert off_again == off
    assert off.active is False
    assert await count_rows(billing, PromoCode) == 1
    assert [e.type for e in events] == ["promo_code.created", "promo_code.deactivated"]


# -- validate: every reason -------------------------------------------------------------------


async def test_validate_gives_each_kind_of_discount(billing: Billing) -> None:
    customer, _, price = await _shop(billing, unit_amount=2999)
    await billing.promo_codes.create(code="P15", percent_off=Decimal("15"))
    await billing.promo_codes.create(code="F10", amount_off=1000, currency="USD")
    await billing.promo_codes.create(code="BIG", amount_off=5000, currency="USD")
    await billing.promo_codes.create(code="T30", trial_days=30)

    checks = {
        code: await billing.promo_codes.validate(code, customer_id=customer.id, price_id=price.id)
        for code in ("p15", "F10", "BIG", "T30")
    }

    assert {code: (c.valid, c.discount, c.reason) for code, c in checks.items()} == {
        "p15": (True, 450, None),
        "F10": (True, 1000, None),
        "BIG": (True, 2999, None),
        "T30": (True, 0, None),
    }
    assert checks["T30"].trial_days == 30
    assert checks["p15"].trial_days is None
    promo = checks["p15"].promo_code
    assert promo is not None
    assert promo.code == "P15"
    custom = await billing.promo_codes.validate(
        "P15", customer_id=str(customer.id), price_id=str(price.id), amount=10_000
    )
    assert custom.discount == 1500


async def _reason(billing: Billing, code: str, customer: Customer, price: Price) -> str | None:
    check = await billing.promo_codes.validate(code, customer_id=customer.id, price_id=price.id)
    assert check.valid is (check.reason is None)
    if not check.valid:
        assert check.discount == 0
    return check.reason


EVERY_CODE = ("NOPE", "OFF", "SOON", "ONCE", "MINE", "TEAM", "PRO", "EUROS", "EURMIN", "BIG", "NEW")


async def test_validate_says_why_a_code_does_not_apply(
    billing: Billing, clock: FrozenClock
) -> None:
    customer, plan, price = await _shop(billing)
    other_plan = await billing.plans.create(name="Team")
    newcomer = await billing.customers.create(email="bob@example.com")
    codes = billing.promo_codes
    await codes.create(code="OFF", percent_off=Decimal("5"))
    await codes.deactivate((await codes.get_by_code("OFF")).id)
    await codes.create(
        code="SOON", percent_off=Decimal("5"), expires_at=clock.now() + timedelta(hours=1)
    )
    await codes.create(code="ONCE", percent_off=Decimal("5"), max_redemptions=1)
    await codes.create(code="MINE", percent_off=Decimal("5"), max_redemptions_per_customer=1)
    await codes.create(code="TEAM", percent_off=Decimal("5"), plan_ids=[other_plan.id])
    await codes.create(code="PRO", percent_off=Decimal("5"), plan_ids=[plan.id])
    await codes.create(code="EUROS", amount_off=500, currency="EUR")
    await codes.create(code="EURMIN", percent_off=Decimal("5"), minimum_amount=100, currency="EUR")
    await codes.create(code="BIG", percent_off=Decimal("5"), minimum_amount=5000, currency="USD")
    await codes.create(code="NEW", trial_days=14, first_time_only=True)
    await _redeem(billing, "ONCE", customer, price)
    await _redeem(billing, "MINE", customer, price)
    async with billing.storage.transaction(TEST) as tx:
        await tx.insert(entities.payment(TEST, customer, status=PaymentStatus.PARTIALLY_REFUNDED))
        await tx.insert(entities.payment(TEST, newcomer, status=PaymentStatus.FAILED))

    reasons = {code: await _reason(billing, code, customer, price) for code in EVERY_CODE}

    assert reasons == {
        "NOPE": "not_found",
        "OFF": "inactive",
        "SOON": None,
        "ONCE": "exhausted",
        "MINE": "customer_limit",
        "TEAM": "not_for_plan",
        "PRO": None,
        "EUROS": "currency",
        "EURMIN": "currency",
        "BIG": "below_minimum",
        "NEW": "first_time_only",
    }
    assert await _reason(billing, "MINE", newcomer, price) is None
    assert await _reason(billing, "NEW", newcomer, price) is None
    big = await codes.validate("BIG", customer_id=customer.id, price_id=price.id, amount=5000)
    assert (big.valid, big.discount) == (True, 250)
    clock.advance(timedelta(hours=1))
    assert await _reason(billing, "SOON", customer, price) == "expired"
    missing = await codes.validate("NOPE", customer_id=customer.id, price_id=price.id)
    assert missing.promo_code is None
    inactive = await codes.validate("OFF", customer_id=customer.id, price_id=price.id)
    assert inactive.promo_code is not None
    assert inactive.promo_code.code == "OFF"


@pytest.mark.parametrize("paid", ["succeeded", "partially_refunded", "refunded"])
async def test_any_paid_payment_makes_a_customer_not_first_time(
    billing: Billing, paid: str
) -> None:
    customer, _, price = await _shop(billing)
    await billing.promo_codes.create(code="NEW", percent_off=Decimal("10"), first_time_only=True)
    for status in ("pending", "failed", "requires_action"):
        async with billing.storage.transaction(TEST) as tx:
            await tx.insert(entities.payment(TEST, customer, status=PaymentStatus(status)))
    assert await _reason(billing, "NEW", customer, price) is None

    async with billing.storage.transaction(TEST) as tx:
        await tx.insert(entities.payment(TEST, customer, status=PaymentStatus(paid)))

    assert await _reason(billing, "NEW", customer, price) == "first_time_only"


async def test_validate_refuses_bad_input(billing: Billing) -> None:
    customer, _, price = await _shop(billing)
    await billing.promo_codes.create(code="OK", percent_off=Decimal("10"))
    cases: list[tuple[dict[str, Any], type[QZPayError], str]] = [
        ({"code": "not ok"}, ValidationError, "code"),
        ({"code": "OK", "customer_id": "nope"}, ValidationError, "customer_id"),
        ({"code": "OK", "price_id": 7}, ValidationError, "price_id"),
        ({"code": "OK", "amount": -1}, ValidationError, "amount"),
        ({"code": "OK", "amount": 10.0}, ValidationError, "amount"),
        ({"code": "OK", "customer_id": uuid.uuid4()}, NotFoundError, "customer_id"),
        ({"code": "OK", "price_id": uuid.uuid4()}, NotFoundError, "price_id"),
    ]
    for changes, error_type, field in cases:
        arguments: dict[str, Any] = {"customer_id": customer.id, "price_id": price.id, **changes}
        with pytest.raises(error_type) as error:
            await billing.promo_codes.validate(**arguments)
        assert error.value.field == field


# -- redemption ---------------------------------------------------------------------------------


async def test_a_redemption_counts_the_code_and_records_its_usage(
    billing: Billing, count_rows: RowCounter
) -> None:
    customer, _, price = await _shop(billing, unit_amount=2999)
    code = await billing.promo_codes.create(code="SAVE15", percent_off=Decimal("15"))
    trial = await billing.promo_codes.create(code="T30", trial_days=30)
    events: list[Event] = []
    billing.on("promo_code.redeemed", events.append)

    redemption = await _redeem(billing, "save15", customer, price)
    trial_redemption = await _redeem(billing, "T30", customer, price)

    assert redemption.discount == 450
    assert redemption.trial_days is None
    assert redemption.promo_code.times_redeemed == 1
    assert redemption.usage.promo_code_id == code.id
    assert redemption.usage.customer_id == customer.id
    assert (redemption.usage.discount_amount, redemption.usage.currency) == (450, "USD")
    assert (trial_redemption.discount, trial_redemption.trial_days) == (0, 30)
    assert (await billing.promo_codes.get(code.id)).times_redeemed == 1
    assert (await billing.promo_codes.get(trial.id)).times_redeemed == 1
    assert await count_rows(billing, PromoCodeUsage) == 2
    assert [e.data.id for e in events] == [code.id, trial.id]
    subscription_id = redemption.usage.subscription_id
    assert subscription_id is not None
    async with billing.storage.transaction(TEST, readonly=True) as tx:
        usage = await tx.get(PromoCodeUsage, redemption.usage.id)
        subscription = await tx.get(Subscription, subscription_id)
    assert usage == redemption.usage
    assert subscription is not None


async def test_a_failure_later_in_the_transaction_uncounts_the_redemption(
    billing: Billing, count_rows: RowCounter
) -> None:
    customer, _, price = await _shop(billing)
    code = await billing.promo_codes.create(
        code="ONCE", percent_off=Decimal("10"), max_redemptions=1
    )
    events: list[Event] = []
    billing.on("*", events.append)

    counted: list[int] = []

    async def redeem_then_fail() -> None:
        async with billing._context.unit_of_work() as uow:
            redemption = await _redeem_in(uow, "ONCE", customer, price)
            counted.append(redemption.promo_code.times_redeemed)
            raise RuntimeError("the charge failed")

    with pytest.raises(RuntimeError, match="the charge failed"):
        await redeem_then_fail()

    assert counted == [1]

    assert (await billing.promo_codes.get(code.id)).times_redeemed == 0
    assert await count_rows(billing, PromoCodeUsage) == 0
    assert await count_rows(billing, Subscription) == 0
    assert events == []
    again = await _redeem(billing, "ONCE", customer, price)
    assert again.promo_code.times_redeemed == 1


async def test_a_redemption_refuses_with_the_reason_as_rule(
    billing: Billing, clock: FrozenClock, count_rows: RowCounter
) -> None:
    customer, _, price = await _shop(billing)
    codes = billing.promo_codes
    off = await codes.create(code="OFF", percent_off=Decimal("5"))
    await codes.deactivate(off.id)
    await codes.create(code="EUROS", amount_off=500, currency="EUR")
    await codes.create(code="BIG", percent_off=Decimal("5"), minimum_amount=5000, currency="USD")
    await codes.create(code="ONCE", percent_off=Decimal("5"), max_redemptions=1)
    await _redeem(billing, "ONCE", customer, price)
    usages = await count_rows(billing, PromoCodeUsage)

    for code, error_type, rule in (
        ("NOPE", ValidationError, "not_found"),
        ("OFF", InvalidStateError, "inactive"),
        ("ONCE", InvalidStateError, "exhausted"),
        ("EUROS", ValidationError, "currency"),
        ("BIG", ValidationError, "below_minimum"),
        ("bad code", ValidationError, "code_format"),
    ):
        with pytest.raises(error_type) as error:
            await _redeem(billing, code, customer, price)
        assert (error.value.field, error.value.rule) == ("promo_code", rule)
    assert await count_rows(billing, PromoCodeUsage) == usages
    big = await _redeem(billing, "BIG", customer, price, amount=6000)
    assert big.discount == 300


async def _race(count: int, work: Callable[[int], Awaitable[None]]) -> tuple[int, list[QZPayError]]:
    done, errors = 0, []

    async def one(index: int) -> None:
        nonlocal done
        try:
            await work(index)
            done += 1
        except QZPayError as error:
            errors.append(error)

    async with anyio.create_task_group() as group:
        for index in range(count):
            group.start_soon(one, index)
    return done, errors


async def test_100_concurrent_redemptions_of_a_code_limited_to_10_give_exactly_10(
    billing: Billing, count_rows: RowCounter
) -> None:
    customer, _, price = await _shop(billing)
    code = await billing.promo_codes.create(
        code="TEN", amount_off=500, currency="USD", max_redemptions=10
    )

    async def redeem(index: int) -> None:
        await _redeem(billing, "TEN", customer, price)

    accepted, errors = await _race(100, redeem)

    assert accepted == 10
    assert len(errors) == 90
    assert {(type(e), e.field, e.rule) for e in errors} == {
        (InvalidStateError, "promo_code", "exhausted")
    }
    assert (await billing.promo_codes.get(code.id)).times_redeemed == 10
    assert await count_rows(billing, PromoCodeUsage) == 10
    assert await count_rows(billing, Subscription) == 10


async def test_a_per_customer_limit_holds_under_concurrency(
    billing: Billing, count_rows: RowCounter
) -> None:
    ann, _, price = await _shop(billing)
    bob = await billing.customers.create(email="bob@example.com")
    code = await billing.promo_codes.create(
        code="TWICE", percent_off=Decimal("10"), max_redemptions_per_customer=2
    )

    async def redeem(index: int) -> None:
        await _redeem(billing, "TWICE", (ann, bob)[index % 2], price)

    accepted, errors = await _race(20, redeem)

    assert accepted == 4
    assert {(type(e), e.field, e.rule) for e in errors} == {
        (InvalidStateError, "promo_code", "customer_limit")
    }
    assert (await billing.promo_codes.get(code.id)).times_redeemed == 4
    async with billing.storage.transaction(TEST, readonly=True) as tx:
        per_customer = await tx.aggregate(PromoCodeUsage, group_by=["customer_id"])
    assert sorted(g.count for g in per_customer) == [2, 2]


# -- the pure discount ------------------------------------------------------------------------

_NOW = entities.NOW


def _code(**fields: Any) -> PromoCode:
    return PromoCode(
        id=uuid.uuid4(), livemode=False, code="X", created_at=_NOW, updated_at=_NOW, **fields
    )


@given(
    amount=st.integers(min_value=0, max_value=2**63 - 1),
    percent=st.decimals(
        min_value=Decimal("0.0001"), max_value=Decimal("100"), places=4, allow_nan=False
    ),
)
def test_a_percentage_discount_rounds_once_and_never_exceeds_the_amount(
    amount: int, percent: Decimal
) -> None:
    code = _code(discount_type=DiscountType.PERCENTAGE, percent_off=percent)

    taken = discount(code, amount=amount, currency="USD")
    with decimal.localcontext(decimal.Context(prec=80)):
        assert taken == _round_half_up(amount * percent / 100)

    assert 0 <= taken <= amount


def _round_half_up(exact: Decimal) -> int:
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


@given(
    amount=st.integers(min_value=0, max_value=10**12),
    off=st.integers(min_value=1, max_value=10**12),
)
def test_a_fixed_discount_is_at_most_the_amount_and_only_in_its_currency(
    amount: int, off: int
) -> None:
    code = _code(discount_type=DiscountType.FIXED_AMOUNT, amount_off=off, currency="USD")

    assert discount(code, amount=amount, currency="usd") == min(off, amount)
    with pytest.raises(ValidationError) as error:
        discount(code, amount=amount, currency="EUR")
    assert error.value.field == "currency"


def test_trial_days_take_no_money_off() -> None:
    code = _code(discount_type=DiscountType.FREE_TRIAL_DAYS, trial_days=30)

    assert discount(code, amount=2900, currency="USD") == 0
