"""Idempotency keys on every mutating call: the first result replayed, never the work twice.

Each rule of DESIGN §7 runs on every adapter: the replay (same object, no second row, no
second event), other parameters refused, a failed call storing nothing, the replay after a
restart, expiry, scoping per operation, livemode and tenant, and concurrent calls with one
key doing the work once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import anyio
import attrs
import pytest

from qzpay import (
    Billing,
    ConflictError,
    Event,
    IdempotencyError,
    NotFoundError,
    QZPayError,
    Scope,
    ValidationError,
    create_billing,
)
from qzpay.adapters.clock import FrozenClock
from qzpay.adapters.events import InProcessEventBus
from qzpay.adapters.fake import FakeProvider
from qzpay.conformance import entities
from qzpay.contracts.storage import StoragePort
from qzpay.domain.catalog import Plan, Price
from qzpay.domain.customers import Customer
from qzpay.domain.enums import DiscountType, PaymentStatus, PromoDuration
from qzpay.domain.payments import Payment, PaymentMethod
from qzpay.domain.promotions import PromoCode
from qzpay.domain.records import AuditLog, IdempotencyKey
from qzpay.services import idempotency
from qzpay.services.context import ServiceContext
from qzpay.settings import Settings
from qzpay.validation import UNSET

pytestmark = pytest.mark.anyio

CountRows = Callable[[Billing, type[Any]], Awaitable[int]]
MakeBilling = Callable[..., Billing]
StoreFactory = Callable[..., StoragePort]


def _events(billing: Billing) -> list[Event]:
    seen: list[Event] = []
    billing.on("*", seen.append)
    return seen


def _context(billing: Billing, clock: FrozenClock) -> ServiceContext:
    """A service context on the billing's storage, to drive the idempotency API directly."""
    return ServiceContext(
        storage=billing.storage,
        provider=billing.provider,
        clock=clock,
        events=InProcessEventBus(),
        livemode=billing.livemode,
        tenant_id=billing.tenant_id,
        multi_tenant=False,
    )


# -- replay -------------------------------------------------------------------------------


async def test_the_same_key_and_parameters_replay_the_first_customer(
    billing: Billing, count_rows: CountRows
) -> None:
    events = _events(billing)

    first = await billing.customers.create(
        email="ann@example.com", name="Ann", metadata={"tier": "gold"}, idempotency_key="k-1"
    )
    again = await billing.customers.create(
        email="ann@example.com", name="Ann", metadata={"tier": "gold"}, idempotency_key="k-1"
    )

    assert again == first
    assert await count_rows(billing, Customer) == 1
    assert await count_rows(billing, AuditLog) == 1
    assert await count_rows(billing, IdempotencyKey) == 1
    assert [event.type for event in events] == ["customer.created"]


async def test_without_a_key_every_call_does_the_work(
    billing: Billing, count_rows: CountRows
) -> None:
    await billing.customers.create(email="ann@example.com")
    await billing.customers.create(email="ann@example.com")

    assert await count_rows(billing, Customer) == 2
    assert await count_rows(billing, IdempotencyKey) == 0


async def test_the_same_key_with_other_parameters_is_refused_naming_the_key(
    billing: Billing, count_rows: CountRows
) -> None:
    await billing.customers.create(email="ann@example.com", idempotency_key="signup-42")

    with pytest.raises(IdempotencyError) as error:
        await billing.customers.create(email="bob@example.com", idempotency_key="signup-42")

    assert error.value.field == "idempotency_key"
    assert error.value.rule == "same_parameters"
    assert "'signup-42'" in str(error.value)
    assert await count_rows(billing, Customer) == 1
    assert await count_rows(billing, AuditLog) == 1
    assert await count_rows(billing, IdempotencyKey) == 1


async def test_a_call_that_failed_validation_stores_nothing_and_the_key_then_works(
    billing: Billing, count_rows: CountRows
) -> None:
    with pytest.raises(ValidationError):
        await billing.customers.create(email="not an email", idempotency_key="k-1")
    assert await count_rows(billing, IdempotencyKey) == 0
    assert await count_rows(billing, Customer) == 0

    ann = await billing.customers.create(email="ann@example.com", idempotency_key="k-1")

    assert ann.email == "ann@example.com"
    assert await count_rows(billing, IdempotencyKey) == 1


async def test_a_call_that_failed_in_its_transaction_keeps_no_key(
    billing: Billing, count_rows: CountRows
) -> None:
    ann = await billing.customers.create(email="ann@example.com", external_id="u_1")

    with pytest.raises(ConflictError):
        await billing.customers.create(
            email="bob@example.com", external_id="u_1", idempotency_key="k-1"
        )
    assert await count_rows(billing, IdempotencyKey) == 0
    await billing.customers.delete(ann.id)

    bob = await billing.customers.create(
        email="bob@example.com", external_id="u_1", idempotency_key="k-1"
    )

    assert bob.external_id == "u_1"
    assert await count_rows(billing, IdempotencyKey) == 1


@pytest.mark.parametrize(
    ("key", "rule"),
    [("", "required_text"), ("k" * 256, "max_length"), ("k\x00", "storable_text"), (42, None)],
)
async def test_a_bad_key_is_a_validation_error_before_anything_is_written(
    billing: Billing, count_rows: CountRows, key: Any, rule: str | None
) -> None:
    with pytest.raises(ValidationError) as error:
        await billing.customers.create(email="ann@example.com", idempotency_key=key)

    assert error.value.field == "idempotency_key"
    if rule is not None:
        assert error.value.rule == rule
    assert await count_rows(billing, Customer) == 0
    assert await count_rows(billing, IdempotencyKey) == 0


async def test_a_key_of_255_characters_is_taken(billing: Billing) -> None:
    key = "k" * 255
    first = await billing.customers.create(email="ann@example.com", idempotency_key=key)

    assert await billing.customers.create(email="ann@example.com", idempotency_key=key) == first


# -- after a restart --------------------------------------------------------------------


async def test_a_replay_after_a_restart_returns_an_equal_object(
    make_billing: MakeBilling, store_factory: StoreFactory, count_rows: CountRows
) -> None:
    async with make_billing(store_factory()) as before:
        plan = await before.plans.create(
            name="Pro", entitlements=["reports", "api"], limits={"seats": 5}, idempotency_key="p"
        )
        price = await before.prices.create(
            plan_id=plan.id, unit_amount=2900, currency="USD", interval="month", idempotency_key="q"
        )
        ann = await before.customers.create(
            email="ann@example.com", metadata={"tier": "gold"}, idempotency_key="c"
        )

    async with make_billing(store_factory()) as after:
        events = _events(after)
        assert (
            await after.plans.create(
                name="Pro",
                entitlements=["reports", "api"],
                limits={"seats": 5},
                idempotency_key="p",
            )
            == plan
        )
        assert (
            await after.prices.create(
                plan_id=str(plan.id),
                unit_amount=2900,
                currency="usd",
                interval="month",
                idempotency_key="q",
            )
            == price
        )
        assert (
            await after.customers.create(
                email="ann@example.com", metadata={"tier": "gold"}, idempotency_key="c"
            )
            == ann
        )
        assert events == []
        assert await count_rows(after, Plan) == 1
        assert await count_rows(after, Price) == 1
        assert await count_rows(after, Customer) == 1


async def test_a_snapshot_keeps_every_field_type_on_every_adapter(
    billing: Billing, clock: FrozenClock
) -> None:
    """Decimals, enums, read-only mappings, tuples, UUIDs and datetimes come back equal."""
    scope = Scope(livemode=False)
    customer = entities.customer(scope)
    promo = attrs.evolve(
        entities.promo_code(scope),
        discount_type=DiscountType.PERCENTAGE,
        percent_off=Decimal("12.50"),
        amount_off=None,
        duration=PromoDuration.REPEATING,
        duration_in_periods=3,
        plan_ids=("plan_a", "plan_b"),
        expires_at=clock.now() + timedelta(days=30),
        metadata={"campaign": "spring"},
    )
    payment = attrs.evolve(
        entities.payment(scope, customer),
        status=PaymentStatus.REQUIRES_ACTION,
        next_action={"type": "redirect", "url": "https://example.com/3ds"},
        subscription_id=customer.id,
    )
    context = _context(billing, clock)

    values: tuple[PromoCode | Payment | Customer, ...] = (promo, payment, customer)
    for number, value in enumerate(values):
        keyed = idempotency.keyed(context, "tests.snapshot", f"k-{number}", n=number)
        async with context.unit_of_work() as uow:
            claim = await idempotency.claim(uow, keyed, type(value))
            await idempotency.complete(uow, keyed, value)
        async with context.unit_of_work() as uow:
            replayed = await idempotency.claim(uow, keyed, type(value))

        assert claim.replay is None
        assert replayed.replay == value
        assert type(replayed.replay) is type(value)
        assert replayed.resource_id == value.id


# -- expiry -------------------------------------------------------------------------------


async def test_a_key_replays_until_its_ttl_and_is_taken_over_after_it(
    store_factory: StoreFactory, fake: FakeProvider, clock: FrozenClock, count_rows: CountRows
) -> None:
    ttl = timedelta(minutes=30)
    async with create_billing(
        storage=store_factory(), provider=fake, clock=clock, idempotency_ttl=ttl
    ) as billing:
        first = await billing.customers.create(email="ann@example.com", idempotency_key="k")
        clock.advance(ttl - timedelta(seconds=1))
        assert await billing.customers.create(email="ann@example.com", idempotency_key="k") == first
        with pytest.raises(IdempotencyError):
            await billing.customers.create(email="bob@example.com", idempotency_key="k")

        clock.advance(timedelta(seconds=1))
        bob = await billing.customers.create(email="bob@example.com", idempotency_key="k")
        again = await billing.customers.create(email="bob@example.com", idempotency_key="k")

        assert bob.id != first.id
        assert again == bob
        assert await count_rows(billing, Customer) == 2
        assert await count_rows(billing, IdempotencyKey) == 1


async def test_the_default_ttl_is_a_day(billing: Billing, clock: FrozenClock) -> None:
    first = await billing.customers.create(email="ann@example.com", idempotency_key="k")
    clock.advance(timedelta(hours=23, minutes=59))
    assert await billing.customers.create(email="ann@example.com", idempotency_key="k") == first

    clock.advance(timedelta(minutes=1))
    later = await billing.customers.create(email="ann@example.com", idempotency_key="k")

    assert later.id != first.id


# -- scoping -----------------------------------------------------------------------------


async def test_one_key_in_two_operations_is_two_keys(
    billing: Billing, count_rows: CountRows
) -> None:
    ann = await billing.customers.create(email="ann@example.com", idempotency_key="k")
    plan = await billing.plans.create(name="Pro", idempotency_key="k")
    renamed = await billing.customers.update(ann.id, name="Ann", idempotency_key="k")
    deleted = await billing.customers.delete(ann.id, idempotency_key="k")

    assert plan.name == "Pro"
    assert renamed.name == "Ann"
    assert deleted.deleted_at is not None
    assert await count_rows(billing, IdempotencyKey) == 4


async def test_one_key_in_two_livemodes_is_two_keys(
    make_billing: MakeBilling, store_factory: StoreFactory, count_rows: CountRows
) -> None:
    async with (
        make_billing(store_factory()) as test,
        make_billing(store_factory(), livemode=True) as live,
    ):
        in_test = await test.customers.create(email="ann@example.com", idempotency_key="k")
        in_live = await live.customers.create(email="ann@example.com", idempotency_key="k")
        with pytest.raises(IdempotencyError):
            await test.customers.create(email="bob@example.com", idempotency_key="k")

        assert in_test.id != in_live.id
        assert (in_test.livemode, in_live.livemode) == (False, True)
        assert await count_rows(test, Customer) == 1
        assert await count_rows(live, Customer) == 1


async def test_one_key_in_two_tenants_is_two_keys(
    make_billing: MakeBilling, count_rows: CountRows
) -> None:
    async with make_billing(tenancy="multi") as billing:
        acme = billing.for_tenant("acme")
        globex = billing.for_tenant("globex")
        for_acme = await acme.customers.create(email="ann@example.com", idempotency_key="k")
        for_globex = await globex.customers.create(email="bob@example.com", idempotency_key="k")

        assert await acme.customers.create(email="ann@example.com", idempotency_key="k") == for_acme
        assert for_globex.tenant_id == "globex"
        assert for_globex.id != for_acme.id
        assert await count_rows(acme, Customer) == 1
        assert await count_rows(globex, Customer) == 1
        assert await count_rows(acme, IdempotencyKey) == 1


# -- concurrency -------------------------------------------------------------------------


async def _together(count: int, call: Callable[[], Awaitable[Any]]) -> list[Any]:
    """``count`` calls started at once; their results (or errors) in the order they ended."""
    outcomes: list[Any] = []

    async def one() -> None:
        try:
            outcomes.append(await call())
        except QZPayError as error:
            outcomes.append(error)

    async with anyio.create_task_group() as group:
        for _ in range(count):
            group.start_soon(one)
    return outcomes


async def test_two_concurrent_calls_with_one_key_create_one_customer(
    billing: Billing, count_rows: CountRows
) -> None:
    events = _events(billing)

    results = await _together(
        2, lambda: billing.customers.create(email="ann@example.com", idempotency_key="k")
    )

    assert len(results) == 2
    assert results[0] == results[1]
    assert isinstance(results[0], Customer)
    assert await count_rows(billing, Customer) == 1
    assert await count_rows(billing, AuditLog) == 1
    assert [event.type for event in events] == ["customer.created"]


async def test_many_concurrent_calls_with_one_key_do_the_work_once(
    billing: Billing, count_rows: CountRows
) -> None:
    results = await _together(6, lambda: billing.plans.create(name="Pro", idempotency_key="launch"))

    assert all(isinstance(result, Plan) for result in results)
    assert len({result.id for result in results}) == 1
    assert await count_rows(billing, Plan) == 1


async def test_concurrent_updates_with_one_key_bump_the_version_once(
    billing: Billing, count_rows: CountRows
) -> None:
    ann = await billing.customers.create(email="ann@example.com")

    results = await _together(
        3, lambda: billing.customers.update(ann.id, name="Ann", idempotency_key="rename")
    )

    assert all(result == results[0] for result in results)
    assert (await billing.customers.get(ann.id)).version == 2
    assert await count_rows(billing, AuditLog) == 2


async def test_a_key_still_in_progress_is_refused_and_then_replays(
    billing: Billing, clock: FrozenClock
) -> None:
    """A multi-step call's key (claimed and bound, no result yet) tells a retry where the
    first call stands; a single-transaction caller refuses to start the work again."""
    context = _context(billing, clock)
    ann = await billing.customers.create(email="ann@example.com")
    keyed = idempotency.keyed(context, "tests.multi_step", "k", customer_id=ann.id)
    async with context.unit_of_work() as uow:
        await idempotency.claim(uow, keyed, Customer)
        await idempotency.bind(uow, keyed, ann.id)

    retry = idempotency.keyed(context, "tests.multi_step", "k", customer_id=str(ann.id))
    async with context.unit_of_work() as uow:
        claim = await idempotency.claim(uow, retry, Customer)
    assert (claim.replay, claim.resource_id, claim.in_progress) == (None, ann.id, True)
    with pytest.raises(IdempotencyError) as error:
        claim.raise_if_in_progress()
    assert error.value.rule == "in_progress"
    assert error.value.field == "idempotency_key"

    async with context.unit_of_work() as uow:
        await idempotency.complete(uow, retry, ann)
    async with context.unit_of_work() as uow:
        done = await idempotency.claim(uow, retry, Customer)
    assert (done.replay, done.in_progress) == (ann, False)


# -- every mutating call -------------------------------------------------------------------


async def test_an_update_replays_the_first_result_after_later_changes(
    billing: Billing, count_rows: CountRows
) -> None:
    ann = await billing.customers.create(email="ann@example.com")
    renamed = await billing.customers.update(ann.id, name="Ann", idempotency_key="u")
    await billing.customers.update(ann.id, name="Annie")

    replayed = await billing.customers.update(ann.id, name="Ann", idempotency_key="u")

    assert replayed == renamed
    assert (await billing.customers.get(ann.id)).name == "Annie"
    with pytest.raises(IdempotencyError):
        await billing.customers.update(ann.id, phone="+1 555", idempotency_key="u")
    with pytest.raises(IdempotencyError):  # None clears; left out leaves: other parameters
        await billing.customers.update(ann.id, name="Ann", phone=None, idempotency_key="u")
    assert await count_rows(billing, AuditLog) == 3


async def test_an_update_that_changed_nothing_still_replays_its_result(
    billing: Billing, count_rows: CountRows
) -> None:
    ann = await billing.customers.create(email="ann@example.com", name="Ann")
    same = await billing.customers.update(ann.id, name="Ann", idempotency_key="u")
    await billing.customers.update(ann.id, name="Annie")

    assert same == ann
    assert await billing.customers.update(ann.id, name="Ann", idempotency_key="u") == ann
    assert await count_rows(billing, AuditLog) == 2


async def test_a_delete_replays_the_deleted_customer_instead_of_not_found(
    billing: Billing,
) -> None:
    ann = await billing.customers.create(email="ann@example.com")
    deleted = await billing.customers.delete(ann.id, idempotency_key="d")

    assert await billing.customers.delete(ann.id, idempotency_key="d") == deleted
    with pytest.raises(NotFoundError):
        await billing.customers.delete(ann.id, idempotency_key="d-2")


async def test_plan_and_price_updates_replay(billing: Billing, count_rows: CountRows) -> None:
    plan = await billing.plans.create(name="Pro")
    price = await billing.prices.create(
        plan_id=plan.id, unit_amount=2900, currency="USD", interval="month"
    )
    renamed = await billing.plans.update(
        plan.id, name="Pro+", limits={"seats": 9}, idempotency_key="a"
    )
    archived = await billing.prices.update(price.id, active=False, idempotency_key="b")

    assert (
        await billing.plans.update(plan.id, name="Pro+", limits={"seats": 9}, idempotency_key="a")
        == renamed
    )
    assert await billing.prices.update(price.id, active=False, idempotency_key="b") == archived
    with pytest.raises(IdempotencyError):
        await billing.prices.update(price.id, active=True, idempotency_key="b")
    assert await billing.plans.get(plan.id) == renamed
    assert await count_rows(billing, AuditLog) == 4


async def test_a_price_for_a_missing_plan_stores_no_key(
    billing: Billing, count_rows: CountRows
) -> None:
    with pytest.raises(NotFoundError):
        await billing.prices.create(
            plan_id=UUID(int=1),
            unit_amount=100,
            currency="USD",
            interval="month",
            idempotency_key="k",
        )

    assert await count_rows(billing, IdempotencyKey) == 0


async def test_attach_replays_without_asking_the_provider_again(
    billing: Billing, fake: FakeProvider, count_rows: CountRows
) -> None:
    ann = await billing.customers.create(email="ann@example.com")
    card = await billing.payment_methods.attach(ann.id, token="pm_card_visa", idempotency_key="a")
    at_the_provider = len(fake.payment_methods)

    again = await billing.payment_methods.attach(ann.id, token="pm_card_visa", idempotency_key="a")

    assert again == card
    assert len(fake.payment_methods) == at_the_provider
    assert await count_rows(billing, PaymentMethod) == 1
    with pytest.raises(IdempotencyError):
        await billing.payment_methods.attach(ann.id, token="pm_card_amex", idempotency_key="a")
    assert len(fake.payment_methods) == at_the_provider


async def test_concurrent_attaches_with_one_key_store_one_method(
    billing: Billing, count_rows: CountRows
) -> None:
    ann = await billing.customers.create(email="ann@example.com")

    results = await _together(
        3,
        lambda: billing.payment_methods.attach(
            ann.id, token="pm_card_visa", set_default=True, idempotency_key="a"
        ),
    )

    assert all(isinstance(result, PaymentMethod) for result in results)
    assert len({result.id for result in results}) == 1
    assert await count_rows(billing, PaymentMethod) == 1


async def test_set_default_and_detach_replay(billing: Billing, count_rows: CountRows) -> None:
    ann = await billing.customers.create(email="ann@example.com")
    visa = await billing.payment_methods.attach(ann.id, token="pm_card_visa")
    amex = await billing.payment_methods.attach(ann.id, token="pm_card_amex")

    made_default = await billing.payment_methods.set_default(amex.id, idempotency_key="s")
    await billing.payment_methods.set_default(visa.id)
    assert await billing.payment_methods.set_default(amex.id, idempotency_key="s") == made_default
    default = await billing.payment_methods.get_default(ann.id)
    assert default is not None
    assert default.id == visa.id

    detached = await billing.payment_methods.detach(amex.id, idempotency_key="d")
    assert await billing.payment_methods.detach(amex.id, idempotency_key="d") == detached
    with pytest.raises(NotFoundError):
        await billing.payment_methods.detach(amex.id)
    assert await count_rows(billing, IdempotencyKey) == 2


# -- the request hash ---------------------------------------------------------------------


def test_equal_parameters_hash_alike_whatever_their_form() -> None:
    same = idempotency.request_hash
    ann = UUID(int=7)

    assert same({"amount": Decimal("20")}) == same({"amount": Decimal("20.00")})
    assert same({"id": ann}) == same({"id": str(ann)})
    assert same({"status": PaymentStatus.SUCCEEDED}) == same({"status": "succeeded"})
    assert same({"a": 1, "b": {"y": 2, "x": 1}}) == same({"b": {"x": 1, "y": 2}, "a": 1})
    assert same({"tags": ("a", "b")}) == same({"tags": ["a", "b"]})
    assert same({"name": UNSET}) == same({})


def test_other_parameters_hash_apart() -> None:
    same = idempotency.request_hash

    assert same({"name": None}) != same({})
    assert same({"amount": Decimal("20")}) != same({"amount": Decimal("20.01")})
    assert same({"tags": ("a", "b")}) != same({"tags": ("b", "a")})
    assert same({"amount": 1}) != same({"amount": "1"})


def test_a_float_parameter_is_a_programming_error() -> None:
    with pytest.raises(TypeError):
        idempotency.request_hash({"amount": 9.99})


def test_keyed_carries_the_configured_ttl(clock: FrozenClock) -> None:
    context = ServiceContext(
        storage=_NOT_OPENED,
        provider=FakeProvider(),
        clock=clock,
        events=InProcessEventBus(),
        livemode=False,
        tenant_id=None,
        multi_tenant=False,
        settings=Settings(idempotency_ttl=timedelta(hours=2)),
    )

    keyed = idempotency.keyed(context, "customers.create", "k", email="ann@example.com")

    assert keyed is not None
    assert keyed.ttl == timedelta(hours=2)
    assert (keyed.operation, keyed.key) == ("customers.create", "k")


_NOT_OPENED: Any = None
"""``keyed`` never touches storage."""
