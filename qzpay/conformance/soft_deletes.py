"""Soft deletes (DESIGN §5.4): a deleted row stays, hidden, and frees its unique keys.

Deleting a soft-deletable entity sets ``deleted_at`` (the row stays in the database). It is
invisible to every read — ``get``, ``get_many``, ``find``, ``list``, ``count``,
``aggregate`` — unless the method takes ``include_deleted=True`` and it is given; no
``claim`` returns it; every write that finds a row by id (``update``, ``soft_delete``,
``increment``) answers ``NotFoundError`` and changes nothing; and its unique keys can be
taken again, by ``insert`` and by ``insert_or_get``. One test per method. Audit logs and
webhook events are append-only: update and delete are refused with ``InvalidStateError``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import attrs
import pytest

from qzpay.conformance import entities
from qzpay.conformance.entities import NOW
from qzpay.conformance.expect import Expectations
from qzpay.conformance.shared import Shared, module_stores
from qzpay.contracts.storage import Scope, StoragePort
from qzpay.domain.customers import Customer
from qzpay.domain.payments import Payment
from qzpay.domain.promotions import PromoCode
from qzpay.domain.records import AuditLog, IdempotencyKey, WebhookEvent
from qzpay.domain.subscriptions import Subscription
from qzpay.errors import InvalidStateError, NotFoundError

pytestmark = pytest.mark.anyio

expect = Expectations("soft_deletes")
TEST = Scope(livemode=False)
DELETED_AT = NOW + timedelta(hours=1)
HIDE = (
    "add `deleted_at IS NULL` to every read and to every write that finds a row by id "
    "(get, get_many, find, list, count, aggregate, claim, update, soft_delete, increment) "
    "unless include_deleted=True"
)
KEEP = "soft-delete by setting deleted_at (an UPDATE), never DELETE the row"
FREE = "make unique keys of soft-deletable kinds partial: WHERE deleted_at IS NULL"


@pytest.fixture(scope="module")
async def shared(request: pytest.FixtureRequest, anyio_backend: str) -> AsyncIterator[Shared]:
    async with module_stores(request) as stores:
        yield stores


@attrs.frozen
class _Rows:
    """One cell's rows: of each kind one deleted (``gone``) and, where it matters, one kept."""

    store: StoragePort
    tag: str
    window: datetime
    gone: Customer
    kept: Customer
    gone_payment: Payment
    kept_payment: Payment
    gone_code: PromoCode
    gone_subscription: Subscription
    kept_subscription: Subscription

    @property
    def key(self) -> str:
        return f"k_{self.tag}"


async def _deleted(shared: Shared) -> _Rows:
    store = await shared.store()
    tag = entities.tag()
    window = shared.window()
    gone = entities.customer(TEST, external_id=f"k_{tag}", name=tag)
    kept = entities.customer(TEST, name=tag)
    plan = entities.plan(TEST, name=tag)
    price = entities.price(TEST, plan.id)
    rows = _Rows(
        store=store,
        tag=tag,
        window=window,
        gone=gone,
        kept=kept,
        gone_payment=entities.payment(TEST, kept, amount=1_000, provider=tag),
        kept_payment=entities.payment(TEST, kept, amount=2_000, provider=tag),
        gone_code=entities.promo_code(TEST, code=f"k_{tag}", max_redemptions=10),
        gone_subscription=entities.subscription(
            TEST, kept, price, due_at=window - timedelta(hours=2)
        ),
        kept_subscription=entities.subscription(
            TEST, kept, price, due_at=window - timedelta(hours=1)
        ),
    )
    seeded: tuple[object, ...] = (
        *(gone, kept, plan, price, rows.gone_payment, rows.kept_payment),
        *(rows.gone_code, rows.gone_subscription, rows.kept_subscription),
    )
    async with store.transaction(TEST) as tx:
        for row in seeded:
            await tx.insert(row)
    async with store.transaction(TEST) as tx:
        await tx.soft_delete(Customer, gone.id, at=DELETED_AT)
        await tx.soft_delete(Payment, rows.gone_payment.id, at=DELETED_AT)
        await tx.soft_delete(PromoCode, rows.gone_code.id, at=DELETED_AT)
        await tx.soft_delete(Subscription, rows.gone_subscription.id, at=DELETED_AT)
    return rows


# -- reads: hidden, unless include_deleted=True ---------------------------------------------


async def test_hidden_from_get(shared: Shared) -> None:
    rows = await _deleted(shared)
    async with rows.store.transaction(TEST, readonly=True) as tx:
        hidden = await tx.get(Customer, rows.gone.id)
        shown = await tx.get(Customer, rows.gone.id, include_deleted=True)
    expect.that(hidden is None, "get returned a soft-deleted customer", HIDE)
    expect.that(
        shown is not None,
        "get(include_deleted=True) found no row after a soft delete: the row was removed",
        KEEP,
    )
    assert shown is not None
    expect.that(
        shown.deleted_at == DELETED_AT,
        f"a soft-deleted customer has deleted_at {shown.deleted_at!r}, not the {DELETED_AT} "
        "it was deleted at",
        "set deleted_at to the `at` the caller passed (storage never reads the wall clock)",
    )


async def test_hidden_from_get_many(shared: Shared) -> None:
    rows = await _deleted(shared)
    async with rows.store.transaction(TEST, readonly=True) as tx:
        many = list(
            await tx.get_many(
                (Customer, rows.gone.id),
                (Customer, rows.kept.id),
                (Payment, rows.gone_payment.id),
            )
        )
    ids = [None if row is None else row.id for row in many]
    expect.that(
        ids == [None, rows.kept.id, None],
        f"get_many of (a deleted customer, a kept one, a deleted payment) gave {ids}",
        HIDE,
    )


async def test_hidden_from_find(shared: Shared) -> None:
    rows = await _deleted(shared)
    async with rows.store.transaction(TEST, readonly=True) as tx:
        by_key = await tx.find(Customer, external_id=rows.key)
        by_email = await tx.find(Customer, email=rows.gone.email)
        by_code = await tx.find(PromoCode, code=rows.key)
        shown = await tx.find(Customer, include_deleted=True, external_id=rows.key)
        shown_by_email = await tx.find(Customer, include_deleted=True, email=rows.gone.email)
    expect.that(
        by_key is None and by_email is None and by_code is None,
        "find returned a soft-deleted row (by "
        + ", ".join(
            name
            for name, row in (("external_id", by_key), ("email", by_email), ("code", by_code))
            if row is not None
        )
        + ")",
        HIDE,
    )
    expect.that(
        shown is not None and shown_by_email is not None,
        "find(include_deleted=True) did not return the soft-deleted customer",
        KEEP,
    )


async def test_hidden_from_list(shared: Shared) -> None:
    rows = await _deleted(shared)
    async with rows.store.transaction(TEST, readonly=True) as tx:
        listed = [c.id for c in (await tx.list(Customer, filters={"name": rows.tag})).items]
        everything = {
            c.id
            for c in (
                await tx.list(Customer, filters={"name": rows.tag}, include_deleted=True)
            ).items
        }
    expect.that(
        listed == [rows.kept.id], f"list returned {len(listed)} of 2 customers, 1 deleted", HIDE
    )
    expect.that(
        everything == {rows.gone.id, rows.kept.id},
        f"list(include_deleted=True) returned {len(everything)} of 2 customers, 1 deleted",
        KEEP,
    )


async def test_hidden_from_count(shared: Shared) -> None:
    rows = await _deleted(shared)
    async with rows.store.transaction(TEST, readonly=True) as tx:
        counted = await tx.count(Customer, filters={"name": rows.tag})
        everything = await tx.count(Customer, filters={"name": rows.tag}, include_deleted=True)
    expect.that(counted == 1, f"count returned {counted} after one of two was deleted", HIDE)
    expect.that(everything == 2, f"count(include_deleted=True) returned {everything}", KEEP)


async def test_hidden_from_aggregate(shared: Shared) -> None:
    rows = await _deleted(shared)
    filters = {"provider": rows.tag}
    async with rows.store.transaction(TEST, readonly=True) as tx:
        total = await tx.aggregate(Payment, sums=("amount",), filters=filters)
        grouped = await tx.aggregate(
            Payment, group_by=("currency",), sums=("amount",), filters=filters
        )
        everything = await tx.aggregate(
            Payment, sums=("amount",), filters=filters, include_deleted=True
        )
    seen = [(g.count, dict(g.sums)) for g in (*total, *grouped)]
    expect.that(
        seen == [(1, {"amount": 2_000})] * 2,
        f"aggregating 2 payments (1,000 deleted, 2,000 kept) gave {seen} (no group_by, "
        "group_by currency): expected count 1, sum 2,000",
        HIDE,
    )
    shown = [(g.count, dict(g.sums)) for g in everything]
    expect.that(
        shown == [(2, {"amount": 3_000})],
        f"aggregate(include_deleted=True) gave {shown}: expected count 2, sum 3,000",
        KEEP,
    )


async def test_never_claimed(shared: Shared) -> None:
    rows = await _deleted(shared)
    async with rows.store.transaction(TEST) as tx:
        claimed = await tx.claim(
            Subscription, now=rows.window, limit=1000, claimant="w", lease=timedelta(0)
        )
    ids = {s.id for s in claimed}
    expect.that(
        rows.gone_subscription.id not in ids, "claim returned a soft-deleted subscription", HIDE
    )
    expect.that(
        rows.kept_subscription.id in ids,
        "claim did not return the due subscription beside a deleted one",
        HIDE,
    )


# -- writes that find a row by id: NotFoundError, nothing changes ---------------------------


async def _still_deleted(rows: _Rows, what: str) -> None:
    async with rows.store.transaction(TEST, readonly=True) as tx:
        customer = await tx.get(Customer, rows.gone.id, include_deleted=True)
        code = await tx.get(PromoCode, rows.gone_code.id, include_deleted=True)
    expect.that(
        customer is not None
        and customer.deleted_at == DELETED_AT
        and customer.name == rows.gone.name
        and code is not None
        and code.times_redeemed == 0,
        f"{what} changed the soft-deleted row",
        "roll the transaction back; find the row with deleted_at IS NULL",
    )


async def test_update_refuses_a_deleted_row(shared: Shared) -> None:
    rows = await _deleted(shared)
    with expect.refusal(NotFoundError, "updating a soft-deleted customer", HIDE):
        async with rows.store.transaction(TEST) as tx:
            await tx.update(attrs.evolve(rows.gone, name="Zombie", version=2))
    await _still_deleted(rows, "a refused update")


async def test_soft_delete_refuses_a_deleted_row(shared: Shared) -> None:
    rows = await _deleted(shared)
    with expect.refusal(NotFoundError, "deleting a soft-deleted customer again", HIDE):
        async with rows.store.transaction(TEST) as tx:
            await tx.soft_delete(Customer, rows.gone.id, at=DELETED_AT + timedelta(hours=1))
    await _still_deleted(rows, "a refused second delete")


async def test_increment_refuses_a_deleted_row(shared: Shared) -> None:
    rows = await _deleted(shared)
    with expect.refusal(NotFoundError, "incrementing a soft-deleted promo code", HIDE):
        async with rows.store.transaction(TEST) as tx:
            await tx.increment(
                PromoCode, rows.gone_code.id, "times_redeemed", 1, at_most="max_redemptions"
            )
    await _still_deleted(rows, "a refused increment")


# -- a deleted row frees its unique keys ----------------------------------------------------


async def test_insert_takes_a_freed_key(shared: Shared) -> None:
    rows = await _deleted(shared)
    new = entities.customer(TEST, external_id=rows.key)
    new_code = entities.promo_code(TEST, code=rows.key)
    failure: Exception | None = None
    try:
        async with rows.store.transaction(TEST) as tx:
            await tx.insert(new)
            await tx.insert(new_code)
    except Exception as error:
        failure = error
    if failure is not None:
        expect.broke(
            "re-using the external_id of a deleted customer (or the code of a deleted promo "
            f"code) was refused: {type(failure).__name__} ({failure})",
            FREE,
        )
    async with rows.store.transaction(TEST, readonly=True) as tx:
        found = await tx.find(Customer, external_id=rows.key)
    expect.that(
        found is not None and found.id == new.id,
        "find by external_id did not return the new holder of a freed key",
        HIDE,
    )


async def test_insert_or_get_takes_a_freed_key(shared: Shared) -> None:
    store = await shared.store()
    key = f"k_{entities.tag()}"
    customer = entities.customer(TEST, external_id=key)
    async with store.transaction(TEST) as tx:
        await tx.insert(customer)
    async with store.transaction(TEST) as tx:
        await tx.soft_delete(Customer, customer.id, at=DELETED_AT)
    again = entities.customer(TEST, external_id=key)
    async with store.transaction(TEST) as tx:
        stored, inserted = await tx.insert_or_get(again, on=("external_id",))
    expect.that(
        inserted and stored.id == again.id,
        "insert_or_get on the external_id of a deleted customer returned "
        + ("the deleted row" if stored.id == customer.id else "another row")
        + f" (inserted={inserted}) instead of inserting",
        FREE + "; and look the key up among rows not deleted",
    )


# -- append-only kinds, and the row in the database -----------------------------------------


@pytest.mark.parametrize("kind", ["audit_log", "webhook_event"])
async def test_audit_logs_and_webhook_events_are_append_only(shared: Shared, kind: str) -> None:
    store = await shared.store()
    row: AuditLog | WebhookEvent = (
        entities.audit_log(TEST)
        if kind == "audit_log"
        else entities.webhook_event(TEST, event_id=f"evt_{entities.tag()}")
    )
    changed: AuditLog | WebhookEvent = (
        attrs.evolve(row, action="tampered")
        if isinstance(row, AuditLog)
        else attrs.evolve(row, type="tampered")
    )
    async with store.transaction(TEST) as tx:
        await tx.insert(row)
    fix = (
        f"refuse update and soft_delete of {kind}s with InvalidStateError(rule='append_only') "
        "(qzpay.adapters.storage_rules.refuse_append_only; a trigger in SQL as well)"
    )
    with expect.refusal(InvalidStateError, f"updating an {kind}", fix):
        async with store.transaction(TEST) as tx:
            await tx.update(changed)
    with expect.refusal(InvalidStateError, f"deleting an {kind}", fix):
        async with store.transaction(TEST) as tx:
            await tx.soft_delete(type(row), row.id, at=DELETED_AT)
    async with store.transaction(TEST, readonly=True) as tx:
        stored = await tx.get(type(row), row.id)
    expect.that(stored == row, f"a refused change to an {kind} changed the stored row", fix)


async def test_a_kind_without_deleted_at_cannot_be_soft_deleted(shared: Shared) -> None:
    store = await shared.store()
    record = entities.idempotency_key(TEST, f"k_{entities.tag()}")
    async with store.transaction(TEST) as tx:
        await tx.insert(record)
    with expect.refusal(
        InvalidStateError,
        "soft-deleting an idempotency key (a kind with no deleted_at)",
        "refuse soft_delete of kinds without deleted_at: InvalidStateError(rule='soft_delete')",
    ):
        async with store.transaction(TEST) as tx:
            await tx.soft_delete(IdempotencyKey, record.id, at=DELETED_AT)


async def test_a_soft_deleted_row_stays_in_the_database(shared: Shared) -> None:
    rows = await _deleted(shared)
    raw = shared.require_raw(rows.store)
    table = f"{rows.store.table_prefix}customers"
    found = await raw.rows(table, email=rows.gone.email)
    kept = await raw.rows(table, email=rows.kept.email)
    if not kept:
        pytest.skip(f"even the kept customer is not in {table}: the prefixes group's rule")
    expect.that(found, f"the soft-deleted customer is gone from {table}", KEEP)
    assert found is not None
    expect.that(
        found[0].get("deleted_at") is not None,
        "the soft-deleted customer's row has no deleted_at in the database",
        KEEP,
    )
