"""Every store refuses text a database cannot hold, naming the field, and writes nothing.

The services refuse it at their boundary already (``qzpay.validation``); this is the same
rule one layer down, for whatever reaches storage another way (a provider's message, a
webhook's payload), so that no adapter keeps what another would fail on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import pytest

from qzpay import Scope, ValidationError
from qzpay.conformance import entities
from qzpay.contracts.storage import StoragePort
from qzpay.domain.customers import Customer

pytestmark = pytest.mark.anyio
TEST = Scope(livemode=False)


class _Text(str):
    """Text of a subclass of ``str`` (as a str enum is): checked like any other."""


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"name": "A\x00nn"}, "name"),
        ({"name": "Ann \ud800"}, "name"),
        ({"metadata": {"tier": "gold\x00"}}, "metadata.tier"),
        ({"metadata": {"ti\udfffer": "gold"}}, "metadata.ti\udfffer"),
        ({"metadata": {"tags": ["ok", "b\x00d"]}}, "metadata.tags"),
        ({"metadata": {"plan": {"tier": "gold\x00"}}}, "metadata.plan.tier"),
        ({"name": _Text("A\x00nn")}, "name"),
    ],
)
@pytest.mark.parametrize("how", ["insert", "update", "insert_or_get"])
async def test_unstorable_text_is_refused_on_every_write(
    store_factory: Callable[..., StoragePort], changes: dict[str, Any], field: str, how: str
) -> None:
    store = store_factory()
    await store.open()
    try:
        ann = entities.customer(TEST, external_id="u_1")
        if how == "update":
            async with store.transaction(TEST) as tx:
                await tx.insert(ann)
        bad = attrs.evolve(ann, **changes)

        async def write() -> None:
            async with store.transaction(TEST) as tx:
                if how == "insert":
                    await tx.insert(bad)
                elif how == "update":
                    await tx.update(bad)
                else:
                    await tx.insert_or_get(bad, on=("external_id",))

        with pytest.raises(ValidationError) as refused:
            await write()
        assert (refused.value.field, refused.value.rule) == (field, "storable_text")
        async with store.transaction(TEST, readonly=True) as tx:
            stored = await tx.get(Customer, ann.id)
        assert stored == (ann if how == "update" else None)
    finally:
        await store.close()
