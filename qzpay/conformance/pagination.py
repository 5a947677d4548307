"""Pagination (DESIGN §5.8): cursor pages are stable under concurrent inserts.

Lists are newest first by the time-ordered id, and a cursor names the last row seen, not an
offset: rows inserted while a client pages through never make it see a row twice or skip
one of the rows that were there when it started. ``next_cursor`` is ``None`` exactly on the
last page: never an empty page after a full one, never a missing cursor while rows follow.
A cursor the adapter did not hand out is a ``ValidationError``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from uuid import UUID

import anyio
import anyio.lowlevel
import pytest

from qzpay.conformance import entities
from qzpay.conformance.entities import NOW
from qzpay.conformance.expect import Expectations
from qzpay.conformance.shared import Shared, module_stores
from qzpay.contracts.storage import Scope, StoragePort
from qzpay.domain.customers import Customer
from qzpay.errors import ValidationError

pytestmark = pytest.mark.anyio

expect = Expectations("pagination")
TEST = Scope(livemode=False)
FIX = (
    "page by keyset: ORDER BY id DESC, and for a cursor WHERE id < :last_id_seen (never "
    "OFFSET); return a next_cursor only while more rows may follow"
)
PAGE = 7
END = "return next_cursor=None exactly when no row follows the page (fetch limit + 1 rows)"


@pytest.fixture(scope="module")
async def shared(request: pytest.FixtureRequest, anyio_backend: str) -> AsyncIterator[Shared]:
    async with module_stores(request) as stores:
        yield stores


async def _insert(store: StoragePort, count: int, *, tag: str) -> list[Customer]:
    rows = [entities.customer(TEST, name=tag) for _ in range(count)]
    async with store.transaction(TEST) as tx:
        for row in rows:
            await tx.insert(row)
    return rows


async def _walk(
    store: StoragePort,
    tag: str,
    between_pages: Callable[[], Awaitable[None]] | None = None,
    *,
    include_deleted: bool = False,
    sizes: list[int] | None = None,
) -> tuple[list[UUID], int]:
    """Every id seen paging through the customers named ``tag``, and the number of pages."""
    seen: list[UUID] = []
    cursor: str | None = None
    pages = 0
    while True:
        async with store.transaction(TEST, readonly=True) as tx:
            page = await tx.list(
                Customer,
                filters={"name": tag},
                limit=PAGE,
                cursor=cursor,
                include_deleted=include_deleted,
            )
        pages += 1
        if sizes is not None:
            sizes.append(len(page.items))
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
    shared: Shared,
) -> None:
    store = await shared.store()
    tag = entities.tag()
    original = await _insert(store, 25, tag=tag)

    async def insert_more() -> None:
        await _insert(store, 3, tag=tag)

    seen, pages = await _walk(store, tag, insert_more)
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


async def test_pages_are_stable_under_a_concurrent_writer(shared: Shared) -> None:
    store = await shared.store()
    tag = entities.tag()
    original = await _insert(store, 30, tag=tag)
    done = anyio.Event()

    async def writer() -> None:
        while not done.is_set():
            await _insert(store, 1, tag=tag)
            await anyio.lowlevel.checkpoint()

    async def yield_between() -> None:
        await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as group:
        group.start_soon(writer)
        try:
            seen, _pages = await _walk(store, tag, yield_between)
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


async def test_pages_are_newest_first_and_end(shared: Shared) -> None:
    store = await shared.store()
    tag = entities.tag()
    rows = await _insert(store, 2 * PAGE, tag=tag)
    seen, pages = await _walk(store, tag)
    expect.that(
        seen == sorted((row.id for row in rows), reverse=True),
        "the pages did not list the 14 customers exactly once, newest (highest id) first",
        FIX,
    )
    expect.that(pages == 2, f"14 rows in pages of {PAGE} took {pages} pages", END)


async def test_deleted_rows_leave_no_hole_in_the_pages(shared: Shared) -> None:
    store = await shared.store()
    tag = entities.tag()
    rows = await _insert(store, 20, tag=tag)
    async with store.transaction(TEST) as tx:
        for row in rows[::3]:
            await tx.soft_delete(Customer, row.id, at=NOW)
    live = {row.id for row in rows} - {row.id for row in rows[::3]}
    async with store.transaction(TEST, readonly=True) as tx:
        counted = await tx.count(Customer, filters={"name": tag})
        everything = await tx.count(Customer, filters={"name": tag}, include_deleted=True)
    if (counted, everything) != (13, 20):
        pytest.skip(
            f"count gave {counted} (expected 13) and with include_deleted {everything} (expected "
            "20) after 7 of 20 were deleted: that is the soft_deletes group's rule"
        )
    seen, _ = await _walk(store, tag)
    walked, _ = await _walk(store, tag, include_deleted=True)
    expect.that(
        sorted(seen) == sorted(live) and sorted(walked) == sorted(row.id for row in rows),
        f"with 7 of 20 customers deleted, paging saw {len(seen)} (expected 13) and with "
        f"include_deleted {len(walked)} (expected 20)",
        FIX + "; apply the deleted_at filter in the same query as the cursor",
    )


@pytest.mark.parametrize("rows", [0, 1, PAGE - 1, PAGE, PAGE + 1, 2 * PAGE, 2 * PAGE + 1])
async def test_the_last_page_says_it_is_the_last(shared: Shared, rows: int) -> None:
    store = await shared.store()
    tag = entities.tag()
    await _insert(store, rows, tag=tag)
    sizes: list[int] = []
    seen, _pages = await _walk(store, tag, sizes=sizes)
    full, rest = divmod(rows, PAGE)
    expected = [PAGE] * full + ([rest] if rest or not full else [])
    expect.that(
        sizes == expected and len(seen) == rows,
        f"paging through {rows} rows in pages of {PAGE} gave pages of {sizes} (expected "
        f"{expected}): "
        + (
            "an empty page after the last one"
            if sizes and sizes[-1] == 0 and rows
            else "next_cursor was missing while rows followed, or pages were short"
        ),
        END,
    )


async def test_a_cursor_not_handed_out_is_refused(shared: Shared) -> None:
    store = await shared.store()
    with expect.refusal(
        ValidationError,
        "list(cursor='not-a-cursor')",
        "decode the cursor and raise ValidationError(field='cursor') when it is not one of yours",
    ):
        async with store.transaction(TEST, readonly=True) as tx:
            await tx.list(Customer, cursor="not-a-cursor")
