"""billing.customers: create, read, update, delete, list; audit rows and events for each change."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from uuid import UUID

import anyio
import anyio.lowlevel
import pytest

from qzpay import Billing, ConflictError, Event, NotFoundError
from qzpay.domain.customers import Customer

pytestmark = pytest.mark.anyio


async def test_a_customer_is_found_by_id_and_by_external_id(billing: Billing) -> None:
    ann = await billing.customers.create(
        email="ann@example.com", name="Ann", external_id="u_1", metadata={"plan": "gold"}
    )

    assert ann.email == "ann@example.com"
    assert ann.version == 1
    assert ann.livemode is False
    assert await billing.customers.get(ann.id) == ann
    assert await billing.customers.get(str(ann.id)) == ann
    assert await billing.customers.get_by_external_id("u_1") == ann


async def test_update_changes_the_given_fields_and_bumps_the_version(billing: Billing) -> None:
    ann = await billing.customers.create(email="ann@example.com", name="Ann", phone="+1 555")

    updated = await billing.customers.update(ann.id, email="ann@new.example.com", name=None)

    assert (updated.email, updated.name, updated.phone) == ("ann@new.example.com", None, "+1 555")
    assert updated.version == 2
    assert await billing.customers.get(ann.id) == updated


async def test_an_update_that_changes_nothing_writes_nothing(billing: Billing) -> None:
    ann = await billing.customers.create(email="ann@example.com", name="Ann")

    same = await billing.customers.update(ann.id, name="Ann")

    assert same == ann
    assert len(await billing.audit.list(entity_id=ann.id)) == 1


async def test_a_deleted_customer_is_gone_from_get_and_list(billing: Billing) -> None:
    ann = await billing.customers.create(email="ann@example.com", external_id="u_1")
    bob = await billing.customers.create(email="bob@example.com")

    deleted = await billing.customers.delete(ann.id)

    assert deleted.deleted_at is not None
    with pytest.raises(NotFoundError):
        await billing.customers.get(ann.id)
    with pytest.raises(NotFoundError):
        await billing.customers.get_by_external_id("u_1")
    with pytest.raises(NotFoundError) as error:
        await billing.customers.delete(ann.id)
    assert error.value.field == "customer_id"
    assert [c.id for c in (await billing.customers.list()).items] == [bob.id]


async def test_list_is_newest_first_and_filters_by_email(billing: Billing) -> None:
    first = await billing.customers.create(email="ann@example.com")
    second = await billing.customers.create(email="bob@example.com")
    third = await billing.customers.create(email="ann@example.com")

    assert [c.id for c in await billing.customers.list()] == [third.id, second.id, first.id]
    by_email = await billing.customers.list(email="ann@example.com")
    assert [c.id for c in by_email] == [third.id, first.id]


async def _all_pages(
    billing: Billing, *, limit: int, between: Callable[[], Awaitable[object]] | None = None
) -> list[UUID]:
    seen: list[UUID] = []
    cursor: str | None = None
    while True:
        page = await billing.customers.list(limit=limit, cursor=cursor)
        seen.extend(customer.id for customer in page.items)
        if page.next_cursor is None:
            return seen
        cursor = page.next_cursor
        if between is not None:
            await between()


async def test_pages_never_repeat_nor_skip_a_customer(billing: Billing) -> None:
    created = [await billing.customers.create(email=f"c{i}@example.com") for i in range(23)]

    seen = await _all_pages(billing, limit=5)

    assert len(seen) == len(set(seen)) == 23
    assert seen == [c.id for c in reversed(created)]


async def test_pages_stay_stable_when_customers_are_inserted_between_pages(
    billing: Billing,
) -> None:
    before = [await billing.customers.create(email=f"old{i}@example.com") for i in range(10)]

    async def insert_two() -> None:
        for _ in range(2):
            await billing.customers.create(email="new@example.com")

    seen = await _all_pages(billing, limit=3, between=insert_two)

    assert seen == [c.id for c in reversed(before)]
    assert len(await billing.customers.list(limit=100)) == 10 + 2 * 3


async def test_pages_stay_stable_while_customers_are_inserted_concurrently(
    billing: Billing,
) -> None:
    before = {(await billing.customers.create(email=f"old{i}@example.com")).id for i in range(20)}
    inserted: list[Customer] = []
    seen: list[UUID] = []

    async def insert_many() -> None:
        for i in range(20):
            inserted.append(await billing.customers.create(email=f"new{i}@example.com"))
            await anyio.lowlevel.checkpoint()

    async def page_through() -> None:
        seen.extend(await _all_pages(billing, limit=3, between=anyio.lowlevel.checkpoint))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(insert_many)
        tasks.start_soon(page_through)

    assert len(seen) == len(set(seen)), "a customer was listed twice"
    assert before <= set(seen), "a customer that existed before paging was skipped"
    assert len(inserted) == 20


async def test_every_change_writes_an_audit_row_and_emits_its_event(billing: Billing) -> None:
    events: list[Event] = []
    billing.on("*", events.append)

    ann = await billing.customers.create(email="ann@example.com", external_id="u_1")
    await billing.customers.update(ann.id, name="Ann")
    await billing.customers.delete(ann.id)

    assert [e.type for e in events] == ["customer.created", "customer.updated", "customer.deleted"]
    assert all(e.data.id == ann.id for e in events)
    audit = await billing.audit.list(entity_id=ann.id)
    assert [(a.entity_type, a.action) for a in reversed(audit.items)] == [
        ("customer", "created"),
        ("customer", "updated"),
        ("customer", "deleted"),
    ]
    assert audit.items[1].changes == {"name": (None, "Ann")}  # frozen: sequences are tuples


async def test_events_are_published_after_the_commit(
    billing: Billing, make_billing: Callable[..., Billing]
) -> None:
    # Another Billing on the same database (for SQLite: another connection) must already see
    # the row when the handler runs, so the event cannot have been published before COMMIT.
    seen_by_other: list[str] = []
    async with make_billing() as other:

        async def check(event: Event) -> None:
            seen_by_other.append((await other.customers.get(event.data.id)).email)

        billing.on("customer.created", check)
        await billing.customers.create(email="ann@example.com")

    assert seen_by_other == ["ann@example.com"]


async def test_a_failing_handler_never_breaks_the_call(billing: Billing) -> None:
    def explode(event: Event) -> None:
        raise RuntimeError("handler bug")

    later: list[str] = []
    billing.on("customer.created", explode)
    billing.on("customer.created", lambda event: later.append(event.type))

    ann = await billing.customers.create(email="ann@example.com")

    assert await billing.customers.get(ann.id) == ann
    assert later == ["customer.created"]


async def test_no_event_is_emitted_when_the_transaction_fails(billing: Billing) -> None:
    events: list[Event] = []
    await billing.customers.create(email="ann@example.com", external_id="u_1")
    billing.on("*", events.append)

    with pytest.raises(ConflictError):
        await billing.customers.create(email="other@example.com", external_id="u_1")

    assert events == []
    assert len(await billing.audit.list(entity_type="customer")) == 1
