"""One storage, several users: opens and closes are counted, and the last close closes.

An app's lifespan and a worker, two facades on one storage, a nested ``async with``, a
tenant view: each may leave on its own without closing the storage under the others. And
tenancy is declared once, on the storage.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest

from qzpay import Billing, ConfigurationError, create_billing
from qzpay.adapters.fake import FakeProvider
from qzpay.adapters.memory import MemoryStorage
from qzpay.adapters.sql.store import SqlStoreBase
from qzpay.contracts.storage import StoragePort

pytestmark = pytest.mark.anyio


def _billing(storage: StoragePort) -> Billing:
    return create_billing(storage=storage, provider=FakeProvider())


async def _works(billing: Billing) -> None:
    await billing.customers.create(email="ann@example.com")
    assert await billing.customers.list()


async def _is_closed(billing: Billing) -> None:
    """A SQL store refuses work once its last user left; memory has nothing to close."""
    if isinstance(billing.storage, MemoryStorage):
        return
    with pytest.raises(ConfigurationError, match="not open"):
        await billing.customers.list()


async def test_two_facades_on_one_storage_leave_in_any_order(
    store_factory: Callable[..., StoragePort],
) -> None:
    storage = store_factory()
    first, second = _billing(storage), _billing(storage)
    await first.__aenter__()
    await second.__aenter__()
    await first.__aexit__(None, None, None)  # the first to leave is not the last
    await _works(second)
    await second.__aexit__(None, None, None)
    await _is_closed(second)
    await _is_closed(first)


async def test_a_nested_async_with_of_one_billing_keeps_the_outer_open(
    store_factory: Callable[..., StoragePort],
) -> None:
    billing = _billing(store_factory())
    async with billing:
        async with billing:
            await _works(billing)
        await _works(billing)
    await _is_closed(billing)


async def test_a_worker_leaving_does_not_close_the_apps_lifespan(
    store_factory: Callable[..., StoragePort],
) -> None:
    billing = _billing(store_factory())
    worker_done = anyio.Event()

    async def worker() -> None:
        async with billing:
            await billing.jobs.run_due()
        worker_done.set()

    async with billing, anyio.create_task_group() as group:  # the app's lifespan
        group.start_soon(worker)
        await worker_done.wait()
        await _works(billing)  # served after the worker left
    await _is_closed(billing)


async def test_concurrent_first_opens_connect_once_and_count_each(
    store_factory: Callable[..., StoragePort],
) -> None:
    storage = store_factory()
    billing = _billing(storage)
    async with anyio.create_task_group() as group:
        for _ in range(8):
            group.start_soon(billing.open)
    if isinstance(storage, SqlStoreBase):
        assert storage.opened == 8
    for _ in range(7):
        await billing.close()
    await _works(billing)
    await billing.close()
    await _is_closed(billing)


async def test_closing_more_than_was_opened_does_not_leave_a_later_open_short(
    store_factory: Callable[..., StoragePort],
) -> None:
    billing = _billing(store_factory())
    await billing.close()  # never opened: nothing to do
    async with billing:
        await billing.close()  # one too many, from user code inside the block
        await _is_closed(billing)
    async with billing:
        await _works(billing)


async def test_a_tenant_view_counts_like_any_other_user(
    store_factory: Callable[..., StoragePort],
) -> None:
    storage = store_factory(multi_tenant=True)
    root = _billing(storage)
    async with root:
        async with root.for_tenant("acme") as acme:
            await _works(acme)
        await _works(root.for_tenant("globex"))  # the root still holds the storage
    await _is_closed(root.for_tenant("acme"))
    # A view used on its own opens the storage, and its exit closes it again.
    view = root.for_tenant("acme")
    async with view:
        assert len(await view.customers.list()) == 1
    await _is_closed(view)


# -- tenancy is declared once, on the storage ------------------------------------------


@pytest.mark.parametrize("multi_tenant", [False, True])
def test_create_billing_takes_the_tenancy_from_the_storage(multi_tenant: bool) -> None:
    billing = create_billing(
        storage=MemoryStorage(multi_tenant=multi_tenant), provider=FakeProvider()
    )
    assert billing.tenancy == ("multi" if multi_tenant else "single")


@pytest.mark.parametrize(("multi_tenant", "tenancy"), [(False, "multi"), (True, "single")])
def test_an_explicit_tenancy_that_disagrees_says_how_to_fix_it(
    multi_tenant: bool, tenancy: Any
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        create_billing(
            storage=MemoryStorage(multi_tenant=multi_tenant),
            provider=FakeProvider(),
            tenancy=tenancy,
        )
    kind = "multi" if multi_tenant else "single"
    assert str(raised.value) == (
        f'tenancy="{tenancy}" but the storage is {kind}-tenant '
        f"(multi_tenant={multi_tenant}): drop tenancy= or make them agree"
    )
    assert "opened" not in str(raised.value)  # nothing was opened yet


def test_an_explicit_tenancy_that_agrees_is_accepted() -> None:
    storage = MemoryStorage(multi_tenant=True)
    assert create_billing(storage=storage, provider=FakeProvider(), tenancy="multi").tenancy == (
        "multi"
    )
