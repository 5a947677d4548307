"""Soft deletes (DESIGN §5.4): a deleted row stays, hidden, and frees its unique keys.

Deleting a soft-deletable entity sets ``deleted_at`` (the row stays in the database); it
disappears from get, list, count and find unless ``include_deleted=True``; its unique keys
can be taken again; and audit logs and webhook events are append-only: update and delete
are refused with ``InvalidStateError``.
"""

from __future__ import annotations

from datetime import timedelta

import attrs
import pytest

from qzpay.conformance import entities
from qzpay.conformance.entities import NOW
from qzpay.conformance.expect import Expectations
from qzpay.conformance.harness import Harness
from qzpay.contracts.storage import Scope
from qzpay.domain.customers import Customer
from qzpay.domain.promotions import PromoCode
from qzpay.domain.records import AuditLog, WebhookEvent
from qzpay.errors import InvalidStateError, NotFoundError

pytestmark = pytest.mark.anyio

expect = Expectations("soft_deletes")
TEST = Scope(livemode=False)
DELETED_AT = NOW + timedelta(hours=1)
HIDE = "add `deleted_at IS NULL` to every get, list, count and find unless include_deleted=True"
KEEP = "soft-delete by setting deleted_at (an UPDATE), never DELETE the row"
FREE = "make unique keys of soft-deletable kinds partial: WHERE deleted_at IS NULL"


async def test_a_deleted_row_disappears_from_get_list_count_and_find(
    conformance: Harness,
) -> None:
    store = await conformance.store()
    gone = entities.customer(TEST, external_id="u_gone")
    kept = entities.customer(TEST, external_id="u_kept")
    async with store.transaction(TEST) as tx:
        await tx.insert(gone)
        await tx.insert(kept)
    async with store.transaction(TEST) as tx:
        await tx.soft_delete(Customer, gone.id, at=DELETED_AT)
    async with store.transaction(TEST, readonly=True) as tx:
        got = await tx.get(Customer, gone.id)
        listed = [c.id for c in (await tx.list(Customer, limit=100)).items]
        counted = await tx.count(Customer)
        found = await tx.find(Customer, external_id="u_gone")
        by_email = (await tx.list(Customer, filters={"email": gone.email})).items
    expect.that(got is None, "get returned a soft-deleted customer", HIDE)
    expect.that(listed == [kept.id], f"list returned {listed} after one of two was deleted", HIDE)
    expect.that(counted == 1, f"count returned {counted} after one of two was deleted", HIDE)
    expect.that(found is None, "find by external_id returned a soft-deleted customer", HIDE)
    expect.that(not by_email, "a filtered list returned a soft-deleted customer", HIDE)


async def test_include_deleted_shows_a_deleted_row_with_its_deleted_at(
    conformance: Harness,
) -> None:
    store = await conformance.store()
    gone = entities.customer(TEST, external_id="u_gone")
    kept = entities.customer(TEST)
    async with store.transaction(TEST) as tx:
        await tx.insert(gone)
        await tx.insert(kept)
    async with store.transaction(TEST) as tx:
        await tx.soft_delete(Customer, gone.id, at=DELETED_AT)
    async with store.transaction(TEST, readonly=True) as tx:
        got = await tx.get(Customer, gone.id, include_deleted=True)
        listed = {c.id for c in (await tx.list(Customer, include_deleted=True)).items}
        counted = await tx.count(Customer, include_deleted=True)
        found = await tx.find(Customer, include_deleted=True, external_id="u_gone")
    expect.that(
        got is not None,
        "get(include_deleted=True) found no row after a soft delete: the row was removed",
        KEEP,
    )
    assert got is not None
    expect.that(
        got.deleted_at == DELETED_AT,
        f"a soft-deleted customer has deleted_at {got.deleted_at!r}, not the {DELETED_AT} "
        "it was deleted at",
        "set deleted_at to the `at` the caller passed (storage never reads the wall clock)",
    )
    expect.that(
        listed == {gone.id, kept.id} and counted == 2 and found is not None,
        f"with include_deleted=True list gave {len(listed)}, count {counted}, find "
        f"{'nothing' if found is None else 'the row'} (expected 2, 2, the row)",
        KEEP,
    )


async def test_deleting_frees_unique_keys(conformance: Harness) -> None:
    store = await conformance.store()
    old = entities.customer(TEST, external_id="u_1")
    code = entities.promo_code(TEST, code="WELCOME")
    async with store.transaction(TEST) as tx:
        await tx.insert(old)
        await tx.insert(code)
    async with store.transaction(TEST) as tx:
        await tx.soft_delete(Customer, old.id, at=DELETED_AT)
        await tx.soft_delete(PromoCode, code.id, at=DELETED_AT)
    new = entities.customer(TEST, external_id="u_1")
    new_code = entities.promo_code(TEST, code="WELCOME")
    failure: Exception | None = None
    try:
        async with store.transaction(TEST) as tx:
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
    async with store.transaction(TEST, readonly=True) as tx:
        found = await tx.find(Customer, external_id="u_1")
    expect.that(
        found is not None and found.id == new.id,
        "find by external_id did not return the new holder of a freed key",
        HIDE,
    )


async def test_a_deleted_row_cannot_be_updated_or_deleted_again(conformance: Harness) -> None:
    store = await conformance.store()
    gone = entities.customer(TEST)
    async with store.transaction(TEST) as tx:
        await tx.insert(gone)
    async with store.transaction(TEST) as tx:
        await tx.soft_delete(Customer, gone.id, at=DELETED_AT)
    with expect.refusal(NotFoundError, "updating a soft-deleted customer", HIDE):
        async with store.transaction(TEST) as tx:
            await tx.update(attrs.evolve(gone, name="Zombie"))
    with expect.refusal(NotFoundError, "deleting a soft-deleted customer again", HIDE):
        async with store.transaction(TEST) as tx:
            await tx.soft_delete(Customer, gone.id, at=DELETED_AT + timedelta(hours=1))
    async with store.transaction(TEST, readonly=True) as tx:
        row = await tx.get(Customer, gone.id, include_deleted=True)
    expect.that(
        row is not None,
        "the soft-deleted customer is gone: get(include_deleted=True) finds nothing",
        KEEP,
    )
    assert row is not None
    expect.that(
        row.deleted_at == DELETED_AT and row.name == gone.name,
        "a refused change to a soft-deleted customer changed it",
        "roll the transaction back",
    )


@pytest.mark.parametrize("kind", ["audit_log", "webhook_event"])
async def test_audit_logs_and_webhook_events_are_append_only(
    conformance: Harness, kind: str
) -> None:
    store = await conformance.store()
    row: AuditLog | WebhookEvent = (
        entities.audit_log(TEST) if kind == "audit_log" else entities.webhook_event(TEST)
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


async def test_a_soft_deleted_row_stays_in_the_database(conformance: Harness) -> None:
    store = await conformance.store()
    raw = conformance.require_raw(store)
    gone = entities.customer(TEST)
    async with store.transaction(TEST) as tx:
        await tx.insert(gone)
    async with store.transaction(TEST) as tx:
        await tx.soft_delete(Customer, gone.id, at=DELETED_AT)
    rows = await raw.rows(f"{store.table_prefix}customers", email=gone.email)
    expect.that(rows, f"the soft-deleted customer is gone from {store.table_prefix}customers", KEEP)
    assert rows is not None
    expect.that(
        rows[0].get("deleted_at") is not None,
        "the soft-deleted customer's row has no deleted_at in the database",
        KEEP,
    )
