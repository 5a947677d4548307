"""billing.invoices: totals to the cent, gapless numbers, intent-first payment, preview.

The pure totals (``qzpay.domain.invoice_totals``) are checked by hand-computed cases and
hypothesis; everything else runs on memory, SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import uuid4

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from qzpay import (
    Billing,
    Event,
    IdempotencyError,
    InvalidStateError,
    NotFoundError,
    ProviderError,
    ValidationError,
)
from qzpay.adapters.fake import FakeProvider
from qzpay.domain.customers import Customer
from qzpay.domain.enums import DiscountType, InvoiceStatus, PromoDuration
from qzpay.domain.invoice_states import INVOICE_TRANSITIONS, invoice_transition
from qzpay.domain.invoice_totals import Line, discount_applies, tax, totals
from qzpay.domain.invoices import Invoice, InvoiceLine, InvoicePayment
from qzpay.domain.payments import Payment
from qzpay.domain.promotions import PromoCode
from qzpay.domain.records import AuditLog, IdempotencyKey
from qzpay.domain.subscriptions import Subscription
from qzpay.services import charging, invoicing

RowCounter = Callable[[Billing, type[Any]], Awaitable[int]]
LOST = ProviderError("read timeout after the request was sent", retryable=True)
NOW = datetime(2030, 1, 1, tzinfo=UTC)
ROWS = (Invoice, InvoiceLine, InvoicePayment, Payment, AuditLog, IdempotencyKey)

anyio_test = pytest.mark.anyio


def _code(
    *,
    percent: str | None = "20",
    amount_off: int | None = None,
    duration: PromoDuration = PromoDuration.ONCE,
    periods: int | None = None,
) -> PromoCode:
    return PromoCode(
        id=uuid4(),
        livemode=False,
        code="X",
        discount_type=DiscountType.PERCENTAGE if percent else DiscountType.FIXED_AMOUNT,
        percent_off=Decimal(percent) if percent else None,
        amount_off=amount_off,
        currency=None if percent else "USD",
        duration=duration,
        duration_in_periods=periods,
        created_at=NOW,
        updated_at=NOW,
    )


# -- totals, pure ------------------------------------------------------------------------


def test_totals_by_hand_three_items_a_credit_twenty_percent_once_and_tax() -> None:
    lines = [Line(unit_amount=999, quantity=3), Line(unit_amount=-500)]
    rate = Decimal("0.21")

    first = totals(lines, promo=_code(), period_index=0, tax_rate=rate)
    later = totals(lines, promo=_code(), period_index=1, tax_rate=rate)

    # 2997 - 500 = 2497; 20% = 499.4 -> 499; 21% of 1998 = 419.58 -> 420.
    assert (first.subtotal, first.discount, first.tax, first.total) == (2497, 499, 420, 2418)
    assert first.amount_due == 2418
    # "once": the next period pays in full; 21% of 2497 = 524.37 -> 524.
    assert (later.discount, later.tax, later.total) == (0, 524, 3021)


def test_a_fixed_discount_is_capped_at_the_subtotal_and_a_credit_gets_none() -> None:
    fixed = _code(percent=None, amount_off=1000, duration=PromoDuration.FOREVER)
    assert totals([Line(unit_amount=600)], promo=fixed, period_index=7).discount == 600
    assert totals([Line(unit_amount=-600)], promo=fixed).discount == 0
    assert totals([Line(unit_amount=600)], currency="EUR", promo=fixed).discount == 0


def test_durations_once_repeating_forever() -> None:
    once = _code(duration=PromoDuration.ONCE)
    repeating = _code(duration=PromoDuration.REPEATING, periods=3)
    forever = _code(duration=PromoDuration.FOREVER)
    assert [discount_applies(once, i) for i in range(3)] == [True, False, False]
    assert [discount_applies(repeating, i) for i in range(5)] == [True] * 3 + [False] * 2
    assert all(discount_applies(forever, i) for i in range(50))


def test_half_a_cent_of_tax_rounds_half_up_once() -> None:
    assert tax(50, Decimal("0.01")) == 1  # 0.5 -> 1
    assert tax(49, Decimal("0.01")) == 0  # 0.49 -> 0
    assert tax(-50, Decimal("0.01")) == -1


def test_the_invoice_transition_table() -> None:
    assert invoice_transition(InvoiceStatus.UNCOLLECTIBLE, InvoiceStatus.PAID) == "paid"
    for final in (InvoiceStatus.PAID, InvoiceStatus.VOID):
        assert INVOICE_TRANSITIONS[final] == frozenset()
    with pytest.raises(InvalidStateError) as raised:
        invoice_transition(InvoiceStatus.DRAFT, InvoiceStatus.VOID)
    assert (raised.value.field, raised.value.rule) == ("status", "transition")


_lines = st.lists(
    st.builds(
        Line,
        unit_amount=st.integers(min_value=-100_000, max_value=1_000_000),
        quantity=st.integers(min_value=1, max_value=1000),
    ),
    max_size=8,
)
_rates = st.none() | st.decimals(min_value=0, max_value=1, places=4)
_promos = st.none() | st.builds(
    _code,
    percent=st.none() | st.decimals(min_value=0, max_value=100, places=2).map(str),
    amount_off=st.integers(min_value=0, max_value=10_000_000),
    duration=st.sampled_from(PromoDuration),
    periods=st.integers(min_value=1, max_value=12),
)


@given(_lines, _promos, st.integers(min_value=0, max_value=20), _rates, st.integers(0, 10**7))
def test_totals_identities_hold(
    lines: list[Line], promo: PromoCode | None, index: int, rate: Decimal | None, paid: int
) -> None:
    result = totals(lines, promo=promo, period_index=index, tax_rate=rate, amount_paid=paid)

    assert result.subtotal == sum(line.unit_amount * line.quantity for line in lines)
    assert result.total == result.subtotal - result.discount + result.tax
    assert result.amount_due == max(result.total - paid, 0)
    assert 0 <= result.discount <= max(result.subtotal, 0)
    base = result.subtotal - result.discount
    if base >= 0:
        assert 0 <= result.tax <= base
    if rate is None:
        assert result.tax == 0
    assert all(isinstance(v, int) for v in (result.discount, result.tax, result.total))


# -- helpers for the service tests ------------------------------------------------------


async def _customer(billing: Billing, token: str | None = "pm_card_visa") -> Customer:
    ann = await billing.customers.create(email="ann@example.com")
    if token is not None:
        await billing.payment_methods.attach(ann.id, token=token, set_default=True)
    return ann


async def _invoice(billing: Billing, customer: Customer, **extra: Any) -> Invoice:
    extra.setdefault(
        "lines",
        [
            {"description": "Seats", "unit_amount": 999, "quantity": 3},
            {"description": "Setup", "unit_amount": 500, "quantity": 1},
        ],
    )
    return await billing.invoices.create(customer_id=customer.id, currency="USD", **extra)


CREDITS = [
    {"description": "Seats", "unit_amount": 999, "quantity": 3},
    {"description": "Goodwill credit", "unit_amount": -500, "quantity": 1},
]


async def _rows(billing: Billing, count_rows: RowCounter) -> list[int]:
    return [await count_rows(billing, kind) for kind in ROWS]


async def _subscription(billing: Billing, customer: Customer, **extra: Any) -> Subscription:
    plan = await billing.plans.create(name="Pro")
    price = await billing.prices.create(
        plan_id=plan.id, unit_amount=1000, currency="USD", interval="month"
    )
    return await billing.subscriptions.create(customer_id=customer.id, price_id=price.id, **extra)


# -- create, finalize, totals ------------------------------------------------------------


@anyio_test
async def test_a_draft_with_a_credit_has_its_totals_and_no_number_until_finalized(
    billing: Billing,
) -> None:
    ann = await _customer(billing)
    events: list[Event] = []
    billing.on("*", events.append)

    draft = await _invoice(billing, ann, tax_rate=Decimal("0.21"), lines=CREDITS)

    assert (draft.status, draft.number, draft.attempt_count) == ("draft", None, 0)
    assert (draft.subtotal, draft.discount, draft.tax, draft.total) == (2497, 0, 524, 3021)
    assert (draft.amount_paid, draft.amount_due, draft.tax_rate) == (0, 3021, Decimal("0.21"))
    lines = (await billing.invoices.lines(draft.id)).items
    assert [(line.description, line.amount, line.proration) for line in lines] == [
        ("Seats", 2997, False),
        ("Goodwill credit", -500, False),
    ]

    opened = await billing.invoices.finalize(draft.id)

    assert (opened.status, opened.number, opened.finalized_at) == (
        "open",
        "INV-000001",
        opened.created_at,
    )
    assert opened.total == 3021
    assert [e.type for e in events] == ["invoice.created", "invoice.finalized"]
    assert await billing.invoices.get(draft.id) == opened
    assert (await billing.invoices.list(customer_id=ann.id, status="open")).items == [opened]
    assert (await billing.invoices.list(status="draft")).items == []


@anyio_test
async def test_finalizing_an_invoice_with_nothing_due_pays_it_at_once(billing: Billing) -> None:
    ann = await _customer(billing, token=None)
    draft = await _invoice(
        billing, ann, lines=[{"description": "Free setup", "unit_amount": 0, "quantity": 1}]
    )

    paid = await billing.invoices.finalize(draft.id)

    assert (paid.status, paid.number, paid.amount_due, paid.paid_at) == (
        "paid",
        "INV-000001",
        0,
        paid.finalized_at,
    )


@anyio_test
async def test_lines_read_in_the_order_they_were_added_a_page_at_a_time(
    billing: Billing,
) -> None:
    ann = await _customer(billing, token=None)
    lines = [{"description": f"Item {n}", "unit_amount": n, "quantity": 1} for n in range(7)]
    draft = await _invoice(billing, ann, lines=lines)

    first = await billing.invoices.lines(draft.id, limit=3)
    second = await billing.invoices.lines(draft.id, limit=3, cursor=first.next_cursor)
    third = await billing.invoices.lines(draft.id, limit=3, cursor=second.next_cursor)

    read = [line.unit_amount for page in (first, second, third) for line in page.items]
    assert read == list(range(7))
    assert third.next_cursor is None
    assert draft.subtotal == sum(range(7))
    with pytest.raises(ValidationError) as raised:
        await billing.invoices.lines(draft.id, cursor="nope")
    assert (raised.value.field, raised.value.rule) == ("cursor", "cursor")


# -- numbers -----------------------------------------------------------------------------


@anyio_test
async def test_ten_concurrent_finalizes_get_numbers_one_to_ten_and_a_void_keeps_its_own(
    billing: Billing,
) -> None:
    ann = await _customer(billing)
    drafts = [await _invoice(billing, ann) for _ in range(10)]
    finalized: list[Invoice] = []

    async def finalize(invoice: Invoice) -> None:
        finalized.append(await billing.invoices.finalize(invoice.id))

    async with anyio.create_task_group() as group:
        for draft in drafts:
            group.start_soon(finalize, draft)

    assert sorted(i.number or "" for i in finalized) == [f"INV-{n:06d}" for n in range(1, 11)]
    voided = await billing.invoices.void(finalized[3].id)
    assert (voided.status, voided.number, voided.amount_due) == ("void", finalized[3].number, 0)
    assert voided.voided_at is not None
    after = await billing.invoices.finalize((await _invoice(billing, ann)).id)
    assert after.number == "INV-000011"


@anyio_test
async def test_numbers_count_per_livemode_and_per_tenant(
    make_billing: Any, store_factory: Any
) -> None:
    async with make_billing() as test, make_billing(livemode=True) as live:
        for billing in (test, live):
            ann = await _customer(billing, token=None)
            invoice = await billing.invoices.finalize((await _invoice(billing, ann)).id)
            assert invoice.number == "INV-000001"
    multi = store_factory(table_prefix="multi_", multi_tenant=True)
    async with make_billing(multi, tenancy="multi") as root:
        for tenant in ("acme", "globex"):
            billing = root.for_tenant(tenant)
            ann = await _customer(billing, token=None)
            numbers = [
                (await billing.invoices.finalize((await _invoice(billing, ann)).id)).number
                for _ in range(2)
            ]
            assert numbers == ["INV-000001", "INV-000002"]


# -- pay ---------------------------------------------------------------------------------


@anyio_test
async def test_pay_charges_the_amount_due_intent_first_and_links_the_payment(
    billing: Billing, fake: FakeProvider, count_rows: RowCounter
) -> None:
    ann = await _customer(billing)
    opened = await billing.invoices.finalize((await _invoice(billing, ann)).id)
    events: list[Event] = []
    billing.on("*", events.append)

    paid = await billing.invoices.pay(opened.id)

    assert (paid.status, paid.amount_paid, paid.amount_due, paid.attempt_count) == (
        "paid",
        3497,
        0,
        1,
    )
    assert paid.paid_at is not None
    [charge] = fake.charges
    assert (charge.request.amount, charge.request.currency) == (3497, "USD")
    [payment] = (await billing.payments.list(customer_id=ann.id)).items
    assert (payment.status, payment.invoice_id, payment.amount) == ("succeeded", paid.id, 3497)
    assert [e.type for e in events] == [
        "payment.created",
        "payment.succeeded",
        "invoice.paid",
    ]
    assert events[-1].data == paid
    assert await count_rows(billing, InvoicePayment) == 1
    scope_link = await _links(billing, paid)
    assert [(link.payment_id, link.amount_applied) for link in scope_link] == [(payment.id, 3497)]
    with pytest.raises(InvalidStateError) as raised:
        await billing.invoices.pay(paid.id)
    assert (raised.value.field, raised.value.rule) == ("invoice_id", "payable")


async def _links(billing: Billing, invoice: Invoice) -> list[InvoicePayment]:
    from qzpay import Scope

    scope = Scope(livemode=billing.livemode, tenant_id=billing.tenant_id)
    async with billing.storage.transaction(scope, readonly=True) as tx:
        page = await tx.list(InvoicePayment, filters={"invoice_id": invoice.id})
    return list(page.items)


@anyio_test
async def test_a_declined_pay_leaves_it_open_counts_the_attempt_and_a_new_card_pays(
    billing: Billing, fake: FakeProvider
) -> None:
    ann = await _customer(billing, token="pm_card_chargeDeclined")
    opened = await billing.invoices.finalize((await _invoice(billing, ann)).id)
    events: list[Event] = []
    billing.on("*", events.append)

    declined = await billing.invoices.pay(opened.id)

    assert (declined.status, declined.amount_paid, declined.attempt_count) == ("open", 0, 1)
    assert [e.type for e in events] == [
        "payment.created",
        "payment.failed",
        "invoice.payment_failed",
    ]
    assert await _links(billing, declined) == []

    await billing.payment_methods.attach(ann.id, token="pm_card_visa", set_default=True)
    paid = await billing.invoices.pay(opened.id)

    assert (paid.status, paid.amount_paid, paid.attempt_count) == ("paid", 3497, 2)
    assert len(fake.charges) == 2
    assert len(await _links(billing, paid)) == 1


@anyio_test
async def test_one_attempt_in_flight_refuses_a_second_pay_and_a_void_until_reconciled(
    billing: Billing, fake: FakeProvider, count_rows: RowCounter
) -> None:
    ann = await _customer(billing)
    opened = await billing.invoices.finalize((await _invoice(billing, ann)).id)
    fake.fail_next("charge", LOST, after=True)
    for _ in range(charging.PROVIDER_ATTEMPTS - 1):
        fake.fail_next("charge", LOST)

    waiting = await billing.invoices.pay(opened.id)
    assert (waiting.status, waiting.attempt_count) == ("open", 1)
    [payment] = (await billing.payments.list(customer_id=ann.id)).items
    assert payment.status == "pending"
    before = await _rows(billing, count_rows)

    with pytest.raises(InvalidStateError) as again:
        await billing.invoices.pay(opened.id)
    with pytest.raises(InvalidStateError) as void:
        await billing.invoices.void(opened.id)

    assert (again.value.field, again.value.rule) == ("invoice_id", "one_attempt_in_flight")
    assert void.value.rule == "one_attempt_in_flight"
    assert await _rows(billing, count_rows) == before
    assert (await billing.invoices.get(opened.id)).attempt_count == 1

    settled = await billing.payments.reconcile(payment.id)
    assert settled.status == "succeeded"
    paid = await billing.invoices.get(opened.id)
    assert (paid.status, paid.amount_paid, len(fake.charges)) == ("paid", 3497, 1)


@anyio_test
async def test_a_keyed_pay_replays_and_never_charges_twice(
    billing: Billing, fake: FakeProvider
) -> None:
    ann = await _customer(billing)
    opened = await billing.invoices.finalize((await _invoice(billing, ann)).id)

    first = await billing.invoices.pay(opened.id, idempotency_key="pay-1")
    again = await billing.invoices.pay(opened.id, idempotency_key="pay-1")

    assert first == again
    assert first.status == "paid"
    assert len(fake.charges) == 1


@anyio_test
async def test_a_keyed_pay_whose_answer_was_lost_is_finished_by_its_retry(
    billing: Billing, fake: FakeProvider
) -> None:
    ann = await _customer(billing)
    opened = await billing.invoices.finalize((await _invoice(billing, ann)).id)
    fake.fail_next("charge", LOST, after=True)
    for _ in range(charging.PROVIDER_ATTEMPTS - 1):
        fake.fail_next("charge", LOST)

    waiting = await billing.invoices.pay(opened.id, idempotency_key="pay-1")
    finished = await billing.invoices.pay(opened.id, idempotency_key="pay-1")

    assert (waiting.status, finished.status, len(fake.charges)) == ("open", "paid", 1)
    assert await billing.invoices.pay(opened.id, idempotency_key="pay-1") == finished


@anyio_test
async def test_pay_without_a_payment_method_writes_nothing(
    billing: Billing, count_rows: RowCounter
) -> None:
    ann = await _customer(billing, token=None)
    opened = await billing.invoices.finalize((await _invoice(billing, ann)).id)
    before = await _rows(billing, count_rows)

    with pytest.raises(InvalidStateError) as raised:
        await billing.invoices.pay(opened.id)

    assert (raised.value.field, raised.value.rule) == ("payment_method", "payment_method")
    assert await _rows(billing, count_rows) == before


# -- void, uncollectible, delete, illegal moves -----------------------------------------


@anyio_test
async def test_an_uncollectible_invoice_may_still_be_paid(billing: Billing) -> None:
    ann = await _customer(billing)
    opened = await billing.invoices.finalize((await _invoice(billing, ann)).id)

    written_off = await billing.invoices.mark_uncollectible(opened.id)
    paid = await billing.invoices.pay(opened.id)

    assert (written_off.status, paid.status, paid.number) == (
        "uncollectible",
        "paid",
        opened.number,
    )


@anyio_test
async def test_a_draft_is_deleted_not_voided(billing: Billing, count_rows: RowCounter) -> None:
    ann = await _customer(billing)
    draft = await _invoice(billing, ann)

    with pytest.raises(InvalidStateError):
        await billing.invoices.void(draft.id)
    deleted = await billing.invoices.delete(draft.id)

    assert deleted.deleted_at is not None
    with pytest.raises(NotFoundError):
        await billing.invoices.get(draft.id)
    after = await billing.invoices.finalize((await _invoice(billing, ann)).id)
    assert after.number == "INV-000001"  # the deleted draft took no number


async def _illegal_moves(billing: Billing, ann: Customer) -> list[tuple[str, Invoice]]:
    draft = await _invoice(billing, ann)
    opened = await billing.invoices.finalize((await _invoice(billing, ann)).id)
    paid = await billing.invoices.pay((await billing.invoices.finalize(
        (await _invoice(billing, ann)).id
    )).id)  # fmt: skip
    voided = await billing.invoices.void(
        (await billing.invoices.finalize((await _invoice(billing, ann)).id)).id
    )
    return [
        ("finalize", opened),
        ("finalize", paid),
        ("pay", draft),
        ("pay", voided),
        ("void", draft),
        ("void", paid),
        ("mark_uncollectible", draft),
        ("mark_uncollectible", paid),
        ("mark_uncollectible", voided),
        ("delete", opened),
    ]


@anyio_test
async def test_every_illegal_move_is_refused_and_writes_nothing(
    billing: Billing, count_rows: RowCounter
) -> None:
    ann = await _customer(billing)
    moves = await _illegal_moves(billing, ann)
    before = await _rows(billing, count_rows)

    for verb, invoice in moves:
        with pytest.raises(InvalidStateError) as raised:
            await getattr(billing.invoices, verb)(invoice.id)
        assert raised.value.rule in ("transition", "payable", "draft_only"), (verb, invoice)
        assert await billing.invoices.get(invoice.id) == invoice

    assert await _rows(billing, count_rows) == before


# -- bad input ---------------------------------------------------------------------------

BAD_CREATE: list[tuple[dict[str, Any], str, str]] = [
    ({"customer_id": "nope"}, "customer_id", "id_format"),
    ({"currency": "XXX"}, "currency", "must be a supported ISO 4217 code"),
    ({"lines": "Setup"}, "lines", "line_list"),
    ({"lines": ["Setup"]}, "lines[0]", "line"),
    ({"lines": [{"description": "A", "unit_amount": 1, "color": "red"}]}, "lines[0]", "line_fields"),
    ({"lines": [{"description": " ", "unit_amount": 1}]}, "lines[0].description", "required_text"),
    ({"lines": [{"description": "A\x00", "unit_amount": 1}]}, "lines[0].description", "storable_text"),
    ({"lines": [{"description": "A", "unit_amount": 9.99}]}, "lines[0].unit_amount", "must be an int of minor units"),
    ({"lines": [{"description": "A", "unit_amount": "999"}]}, "lines[0].unit_amount", "must be an int of minor units"),
    ({"lines": [{"description": "A", "unit_amount": 1, "quantity": 0}]}, "lines[0].quantity", "int_range"),
    ({"lines": [{"description": "A", "unit_amount": 1, "quantity": True}]}, "lines[0].quantity", "int_range"),
    ({"lines": [{"description": "A", "unit_amount": 2**62, "quantity": 4}]}, "lines[0].unit_amount", "must be between -9223372036854775807 and 9223372036854775807"),
    ({"tax_rate": 0.21}, "tax_rate", "decimal"),
    ({"tax_rate": Decimal("21")}, "tax_rate", "tax_rate_range"),
    ({"tax_rate": Decimal("-0.1")}, "tax_rate", "tax_rate_range"),
    ({"tax_rate": Decimal("NaN")}, "tax_rate", "decimal"),
    ({"subscription_id": "nope"}, "subscription_id", "id_format"),
    ({"metadata": {"a": 1}}, "metadata", "metadata"),
    ({"idempotency_key": ""}, "idempotency_key", "required_text"),
]  # fmt: skip


@anyio_test
@pytest.mark.parametrize(("change", "field", "rule"), BAD_CREATE)
async def test_bad_input_to_create_names_the_field_and_rule_and_writes_nothing(
    billing: Billing, count_rows: RowCounter, change: dict[str, Any], field: str, rule: str
) -> None:
    ann = await _customer(billing)
    before = await _rows(billing, count_rows)
    arguments: dict[str, Any] = {
        "customer_id": ann.id,
        "currency": "USD",
        "lines": [{"description": "Setup", "unit_amount": 5000, "quantity": 1}],
    }
    arguments.update(change)

    with pytest.raises(ValidationError) as raised:
        await billing.invoices.create(**arguments)

    assert (raised.value.field, raised.value.rule) == (field, rule)
    assert await _rows(billing, count_rows) == before


@anyio_test
async def test_ids_that_name_nothing_or_the_wrong_owner_are_refused(
    billing: Billing, count_rows: RowCounter
) -> None:
    ann = await _customer(billing)
    bob = await billing.customers.create(email="bob@example.com")
    sub = await _subscription(billing, ann)
    before = await _rows(billing, count_rows)
    missing = uuid4()

    with pytest.raises(NotFoundError) as no_customer:
        await billing.invoices.create(customer_id=missing, currency="USD")
    with pytest.raises(ValidationError) as owner:
        await billing.invoices.create(customer_id=bob.id, currency="USD", subscription_id=sub.id)
    with pytest.raises(ValidationError) as currency:
        await billing.invoices.create(customer_id=ann.id, currency="EUR", subscription_id=sub.id)
    for verb in ("finalize", "pay", "void", "mark_uncollectible", "delete", "get", "lines"):
        with pytest.raises(NotFoundError) as raised:
            await getattr(billing.invoices, verb)(missing)
        assert raised.value.field == "invoice_id"
        with pytest.raises(ValidationError) as bad:
            await getattr(billing.invoices, verb)("nope")
        assert (bad.value.field, bad.value.rule) == ("invoice_id", "id_format")
    with pytest.raises(NotFoundError):
        await billing.invoices.preview(missing)
    with pytest.raises(ValidationError) as status:
        await billing.invoices.list(status="late")

    assert no_customer.value.field == "customer_id"
    assert (owner.value.field, owner.value.rule) == ("subscription_id", "owner")
    assert (currency.value.field, currency.value.rule) == ("currency", "subscription_currency")
    assert (status.value.field, status.value.rule) == ("status", "status")
    assert await _rows(billing, count_rows) == before


@anyio_test
async def test_a_keyed_create_replays_and_refuses_other_parameters(
    billing: Billing, count_rows: RowCounter
) -> None:
    ann = await _customer(billing)
    first = await _invoice(billing, ann, idempotency_key="inv-1")
    again = await _invoice(billing, ann, idempotency_key="inv-1")

    assert first == again
    assert await count_rows(billing, Invoice) == 1
    with pytest.raises(IdempotencyError) as raised:
        await _invoice(billing, ann, idempotency_key="inv-1", tax_rate=Decimal("0.1"))
    assert raised.value.rule == "same_parameters"
    opened = await billing.invoices.finalize(first.id, idempotency_key="fin-1")
    assert await billing.invoices.finalize(first.id, idempotency_key="fin-1") == opened


# -- preview and the subscription's draft -------------------------------------------------


@anyio_test
async def test_preview_is_the_next_period_with_the_drafts_prorations_and_writes_nothing(
    billing: Billing, count_rows: RowCounter
) -> None:
    ann = await _customer(billing)
    sub = await _subscription(billing, ann, quantity=2)
    context = billing._context  # the lifecycle's building blocks, as a renewal uses them
    async with context.unit_of_work() as uow:
        draft = await invoicing.upcoming_draft(uow, sub)
        again = await invoicing.upcoming_draft(uow, sub)
        draft = await invoicing.add_lines(
            uow,
            draft,
            [
                invoicing.LineDraft(description="Unused time", unit_amount=-500, proration=True),
                invoicing.LineDraft(description="Remaining time", unit_amount=1000, proration=True),
            ],
        )
    assert again.id == draft.id
    assert (draft.status, draft.subtotal, draft.period_start) == (
        "draft",
        500,
        sub.current_period_end,
    )
    before = await _rows(billing, count_rows)

    preview = await billing.invoices.preview(sub.id)

    assert await _rows(billing, count_rows) == before
    invoice = preview.invoice
    assert [(line.amount, line.proration) for line in preview.lines] == [
        (-500, True),
        (1000, True),
        (2000, False),
    ]
    assert (invoice.subtotal, invoice.discount, invoice.tax, invoice.total) == (2500, 0, 0, 2500)
    assert (invoice.period_start, invoice.number, invoice.status) == (
        sub.current_period_end,
        None,
        "draft",
    )
    assert {line.invoice_id for line in preview.lines} == {invoice.id}
    with pytest.raises(NotFoundError):
        await billing.invoices.get(invoice.id)


@anyio_test
@pytest.mark.parametrize(
    ("duration", "periods", "expected"),
    [("once", None, 0), ("repeating", 3, 200), ("forever", None, 200)],
)
async def test_preview_applies_the_promo_code_by_its_duration(
    billing: Billing, duration: str, periods: int | None, expected: int
) -> None:
    ann = await _customer(billing)
    await billing.promo_codes.create(
        code="SAVE20", percent_off=Decimal("20"), duration=duration, duration_in_periods=periods
    )
    sub = await _subscription(billing, ann, promo_code="SAVE20")

    preview = await billing.invoices.preview(sub.id)

    # The first period was charged 800 at once; "once" is spent, the others go on.
    assert preview.invoice.discount == preview.discount == expected
    assert preview.total == preview.amount_due == 1000 - expected
    assert [(line.amount, line.proration) for line in preview.lines] == [(1000, False)]
    assert preview.period_start == sub.current_period_end


@anyio_test
async def test_concurrent_pays_of_one_invoice_charge_it_once(
    billing: Billing, fake: FakeProvider
) -> None:
    ann = await _customer(billing)
    opened = await billing.invoices.finalize((await _invoice(billing, ann)).id)
    outcomes: list[object] = []

    async def pay() -> None:
        try:
            outcomes.append(await billing.invoices.pay(opened.id))
        except InvalidStateError as error:
            outcomes.append(error.rule)

    async with anyio.create_task_group() as group:
        for _ in range(8):
            group.start_soon(pay)

    assert len(fake.charges) == 1
    paid = await billing.invoices.get(opened.id)
    assert (paid.status, paid.amount_paid, len(await _links(billing, paid))) == ("paid", 3497, 1)
    assert all(o == paid or o in ("one_attempt_in_flight", "payable") for o in outcomes)


@anyio_test
async def test_a_subscription_that_will_not_renew_has_no_preview(billing: Billing) -> None:
    ann = await _customer(billing)
    sub = await _subscription(billing, ann)
    context = billing._context
    async with context.unit_of_work() as uow:
        current = await uow.tx.get(Subscription, sub.id)
        assert current is not None
        import attrs

        await uow.tx.update(attrs.evolve(current, cancel_at_period_end=True))

    with pytest.raises(InvalidStateError) as raised:
        await billing.invoices.preview(sub.id)
    assert (raised.value.field, raised.value.rule) == ("subscription_id", "no_upcoming_invoice")


@anyio_test
async def test_a_finalized_invoice_takes_no_more_lines(billing: Billing) -> None:
    ann = await _customer(billing)
    opened = await billing.invoices.finalize((await _invoice(billing, ann)).id)
    async with billing._context.unit_of_work() as uow:
        with pytest.raises(InvalidStateError) as raised:
            await invoicing.add_lines(
                uow, opened, [invoicing.LineDraft(description="Late", unit_amount=100)]
            )
    assert raised.value.rule == "draft_only"
