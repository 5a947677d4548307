"""Immutability: a returned entity is the adapter's copy, never its stored state.

Whatever a caller does to an entity a method returned — ``get``, ``get_many``, ``find``,
``list``, ``claim``, ``increment``, ``update``, ``insert_or_get`` — changes nothing stored:
writing into its mapping fields (``metadata``) either raises or changes only the caller's
copy, and no two calls hand out one mutable object. (Domain values are frozen and their
mappings read-only; an adapter that rebuilds them from rows with plain ``dict`` mappings, or
keeps and returns its own objects, is what this catches.) One test per method.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from datetime import timedelta
from typing import Any

import attrs
import pytest

from qzpay.conformance import entities
from qzpay.conformance.expect import Expectations
from qzpay.conformance.shared import Shared, module_stores
from qzpay.contracts.storage import Scope, StoragePort
from qzpay.domain.customers import Customer
from qzpay.domain.subscriptions import Subscription

pytestmark = pytest.mark.anyio

expect = Expectations("immutability")
TEST = Scope(livemode=False)
FIX = (
    "build a new entity from the stored row for every answer (mapping fields as read-only "
    "copies: the domain classes' converters do it), never hand out an object you keep"
)
ORIGINAL = {"tier": "silver"}


@pytest.fixture(scope="module")
async def shared(request: pytest.FixtureRequest, anyio_backend: str) -> AsyncIterator[Shared]:
    async with module_stores(request) as stores:
        yield stores


@attrs.frozen
class _Rows:
    store: StoragePort
    customer: Customer
    subscription: Subscription
    window: Any


async def _rows(shared: Shared) -> _Rows:
    store = await shared.store()
    window = shared.window()
    customer = entities.customer(TEST, external_id=f"k_{entities.tag()}", metadata=ORIGINAL)
    plan = entities.plan(TEST)
    price = entities.price(TEST, plan.id)
    subscription = entities.subscription(
        TEST, customer, price, due_at=window - timedelta(hours=1), metadata=ORIGINAL
    )
    async with store.transaction(TEST) as tx:
        for row in (customer, plan, price, subscription):
            await tx.insert(row)
    return _Rows(store, customer, subscription, window)


_Read = Callable[[_Rows], Awaitable[Any]]


async def _get(rows: _Rows) -> Any:
    async with rows.store.transaction(TEST, readonly=True) as tx:
        return await tx.get(Customer, rows.customer.id)


async def _get_many(rows: _Rows) -> Any:
    async with rows.store.transaction(TEST, readonly=True) as tx:
        return (await tx.get_many((Customer, rows.customer.id)))[0]


async def _find(rows: _Rows) -> Any:
    async with rows.store.transaction(TEST, readonly=True) as tx:
        return await tx.find(Customer, external_id=rows.customer.external_id)


async def _list(rows: _Rows) -> Any:
    async with rows.store.transaction(TEST, readonly=True) as tx:
        return (await tx.list(Customer, filters={"email": rows.customer.email})).items[0]


async def _claim(rows: _Rows) -> Any:
    async with rows.store.transaction(TEST) as tx:
        claimed = await tx.claim(
            Subscription, now=rows.window, limit=10, claimant="w", lease=timedelta(0)
        )
    return next(s for s in claimed if s.id == rows.subscription.id)


async def _increment(rows: _Rows) -> Any:
    async with rows.store.transaction(TEST) as tx:
        return await tx.increment(Subscription, rows.subscription.id, "quantity", 0)


async def _update(rows: _Rows) -> Any:
    async with rows.store.transaction(TEST) as tx:
        current = await tx.get(Customer, rows.customer.id)
        assert current is not None
        return await tx.update(attrs.evolve(current, name="Ann"))


async def _insert_or_get(rows: _Rows) -> Any:
    again = entities.customer(TEST, external_id=rows.customer.external_id)
    async with rows.store.transaction(TEST) as tx:
        stored, _ = await tx.insert_or_get(again, on=("external_id",))
    return stored


READS: dict[str, _Read] = {
    "get": _get,
    "get_many": _get_many,
    "find": _find,
    "list": _list,
    "claim": _claim,
    "increment": _increment,
    "update": _update,
    "insert_or_get": _insert_or_get,
}


async def _stored_metadata(rows: _Rows, kind: type[Any]) -> dict[str, Any]:
    entity_id = rows.customer.id if kind is Customer else rows.subscription.id
    async with rows.store.transaction(TEST, readonly=True) as tx:
        stored = await tx.get(kind, entity_id)
    return {} if stored is None else dict(stored.metadata)


@pytest.mark.parametrize("method", list(READS))
async def test_a_returned_entity_is_a_copy(shared: Shared, method: str) -> None:
    rows = await _rows(shared)
    read = READS[method]
    first = await read(rows)
    second = await read(rows)
    expect.that(
        first is not None and second is not None,
        f"{method} returned no entity to look at",
        "return the row",
    )
    kind = type(first)
    mapping = first.metadata
    if isinstance(mapping, MutableMapping):
        expect.that(
            first is not second and mapping is not second.metadata,
            f"two calls of {method} handed out one mutable object (the same metadata dict)",
            FIX,
        )
        mapping["tier"] = "gold"
    stored = await _stored_metadata(rows, kind)
    expect.that(
        stored == ORIGINAL,
        f"writing into the metadata of an entity {method} returned changed the stored "
        f"{kind.__name__.lower()} (its metadata is now {stored})",
        FIX,
    )
    again = await read(rows)
    expect.that(
        dict(again.metadata) == ORIGINAL,
        f"after a caller wrote into the metadata {method} returned, the next {method} returned "
        f"{dict(again.metadata)}",
        FIX,
    )
