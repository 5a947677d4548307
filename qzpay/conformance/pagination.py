"""Pagination (DESIGN §5.8): cursor pages are stable under concurrent inserts.

Lists are newest first by the time-ordered id, and a cursor names the last row seen, not an
offset: rows inserted while a client pages through never make it see a row twice or skip
one of the rows that were there when it started.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from uuid import UUID

import anyio
import anyio.lowlevel
import pytest

from qzpay.conformance import entities
from qzpay.conformance.entities import NOW
from qzpay.conformance.expect import Expectations
from qzpay.conformance.harness import Harness
from qzpay.contracts.storage import Scope, StoragePort
from qzpay.domain.customers import Customer

pytestmark = pytest.mark.anyio

expect = Expectations("pagination")
TEST = Scope(livemode=False)
FIX = (
    "page by keyset: ORDER BY id DESC, and for a cursor WHERE id < :last_id_seen (never "
    "OFFSET); return a next_cursor only while more rows may follow"
)
PAGE = 7


async def _insert(store: StoragePort, count: int, *, tag: str) -> list[Customer]:
    rows = [entities.customer(TEST, name=tag) for _ in range(count)]
    async with store.transaction(TEST) as tx:
        for row in rows:
            await tx.insert(row)
    return rows


async def _walk(
    store: StoragePort,
    between_pages: Callable[[], Awaitable[None]] | None = None,
    *,
    include_deleted: bool = False,
) -> tuple[list[UUID], int]:
    """Every id seen paging through customers, and the number of pages it took."""
    seen: list[UUID] = []
    cursor: str | None = None
    pages = 0
    while True:
        async with store.transaction(TEST, readonly=True) as tx:
            page = await tx.list(
                Customer, limit=PAGE, cursor=cursor, include_deleted=include_deleted
            )
        pages += 1
        seen.extend(c.id for c in page.items)
        expect.that(
            len(page.items) <= PAGE,
            f"a page of limit {PAGE} returned {len(page.items)} rows",
            FIX,
        )
        if page.next_cursor is None or pages > 50:
            return seen, pages
        cursor = page.next_cursor
        if between_pages is not None:
            await between_pages()


async def test_pages_never_repeat_or_skip_a_row_under_inserts_between_pages(
    conformance: Harness,
) -> None:
    store = await conformance.store()
    original = await _insert(store, 25, tag="original")

    async def insert_more() -> None:
        await _insert(store, 3, tag="between")

    seen, pages = await _walk(store, insert_more)
    repeated = len(seen) - len(set(seen))
    missing = {row.id for row in original} - set(seen)
    expect.that(
        pages <= 50,
        "paging did not end after 50 pages of 7 for 25 rows (the cursor does not advance)",
        FIX,
    )
    expect.that(
        not repeated and not missing,
        f"paging through 25 customers in pages of {PAGE}, with 3 inserted between pages, "
        f"saw {repeated} row(s) twice and skipped {len(missing)} of the 25",
        FIX,
    )


async def test_pages_are_stable_under_a_concurrent_writer(conformance: Harness) -> None:
    store = await conformance.store()
    original = await _insert(store, 30, tag="original")
    done = anyio.Event()

    async def writer() -> None:
        while not done.is_set():
            await _insert(store, 1, tag="concurrent")
            await anyio.lowlevel.checkpoint()

    async def yield_between() -> None:
        await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as group:
        group.start_soon(writer)
        try:
            seen, _pages = await _walk(store, yield_between)
        finally:
            done.set()
    repeated = len(seen) - len(set(seen))
    missing = {row.id for row in original} - set(seen)
    expect.that(
        not repeated and not missing,
        f"paging through 30 customers while another task inserted saw {repeated} row(s) "
        f"twice and skipped {len(missing)} of the 30",
        FIX,
    )


async def test_pages_are_newest_first_and_end(conformance: Harness) -> None:
    store = await conformance.store()
    rows = await _insert(store, 2 * PAGE, tag="original")
    seen, pages = await _walk(store)
    expect.that(
        seen == sorted((row.id for row in rows), reverse=True),
        "the pages did not list the 14 customers exactly once, newest (highest id) first",
        FIX,
    )
    expect.that(
        pages <= 3,
        f"14 rows in pages of {PAGE} took {pages} pages",
        "return next_cursor=None on the last page",
    )


async def test_deleted_rows_leave_no_hole_in_the_pages(conformance: Harness) -> None:
    store = await conformance.store()
    rows = await _insert(store, 20, tag="original")
    async with store.transaction(TEST) as tx:
        for row in rows[::3]:
            await tx.soft_delete(Customer, row.id, at=NOW)
    live = {row.id for row in rows} - {row.id for row in rows[::3]}
    seen, _ = await _walk(store)
    everything, _ = await _walk(store, include_deleted=True)
    expect.that(
        sorted(seen) == sorted(live) and sorted(everything) == sorted(row.id for row in rows),
        f"with 7 of 20 customers deleted, paging saw {len(seen)} (expected 13) and with "
        f"include_deleted {len(everything)} (expected 20)",
        FIX + "; apply the deleted_at filter in the same query as the cursor",
    )
