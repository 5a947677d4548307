"""Nothing a caller does to a returned value changes what is stored (no aliasing)."""

from __future__ import annotations

import pytest

from qzpay import Billing

pytestmark = pytest.mark.anyio


async def test_a_customers_metadata_cannot_be_changed_in_place(billing: Billing) -> None:
    ann = await billing.customers.create(email="ann@example.com", metadata={"tier": "silver"})

    with pytest.raises(TypeError):
        ann.metadata["tier"] = "gold"  # type: ignore[index]

    stored = await billing.customers.get(ann.id)
    assert stored.metadata == {"tier": "silver"}
    assert stored.version == 1


async def test_the_dict_given_to_create_is_copied(billing: Billing) -> None:
    given = {"tier": "silver"}
    ann = await billing.customers.create(email="ann@example.com", metadata=given)

    given["tier"] = "gold"

    assert ann.metadata == {"tier": "silver"}
    assert (await billing.customers.get(ann.id)).metadata == {"tier": "silver"}


async def test_the_audit_log_cannot_be_rewritten_through_a_returned_row(billing: Billing) -> None:
    ann = await billing.customers.create(email="ann@example.com")
    await billing.customers.update(ann.id, name="Ann")
    [updated, _created] = (await billing.audit.list(entity_id=ann.id)).items

    with pytest.raises(TypeError):
        updated.changes["name"] = "forged"  # type: ignore[index]
    with pytest.raises(TypeError):
        updated.changes["name"][1] = "forged"

    [again, _] = (await billing.audit.list(entity_id=ann.id)).items
    assert again.changes == {"name": (None, "Ann")}
