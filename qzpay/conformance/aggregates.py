"""Aggregates: counts and integer sums, grouped and filtered, computed by the store.

``aggregate(kind, group_by=..., sums=..., filters=...)`` answers one ``Group`` per distinct
combination of the ``group_by`` values that has rows, ordered by those values ascending with
NULL first; with no ``group_by`` exactly one group, count 0 and sums 0 when nothing matches;
a sum over no non-NULL value is 0; ``sums`` must name integer columns and every column must
exist (``ValidationError`` otherwise; filters themselves: the filters group). That aggregates see only the transaction's scope and
no soft-deleted row is checked where those rules live, cell ``aggregate`` of the tenancy,
livemode and prefixes matrices and ``test_hidden_from_aggregate`` of soft_deletes, so that
an adapter breaking one rule fails one group.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import attrs
import pytest

from qzpay.conformance import entities
from qzpay.conformance.expect import Expectations
from qzpay.conformance.shared import Shared, module_stores
from qzpay.contracts.storage import Group, Scope, StoragePort
from qzpay.domain.enums import PaymentStatus
from qzpay.domain.payments import Payment, PaymentMethod
from qzpay.errors import ValidationError

pytestmark = pytest.mark.anyio

expect = Expectations("aggregates")
TEST = Scope(livemode=False)
FIX = (
    "compute SELECT <group_by>, count(*), coalesce(sum(<col>), 0) ... WHERE <scope, filters, "
    "deleted_at IS NULL> GROUP BY <group_by> ORDER BY <group_by> NULLS FIRST in the store"
)
SUCCEEDED, FAILED = PaymentStatus.SUCCEEDED, PaymentStatus.FAILED


@pytest.fixture(scope="module")
async def shared(request: pytest.FixtureRequest, anyio_backend: str) -> AsyncIterator[Shared]:
    async with module_stores(request) as stores:
        yield stores


@attrs.frozen
class _Payments:
    store: StoragePort
    tag: str


PAYMENTS: tuple[tuple[str, PaymentStatus, int, str | None], ...] = (
    ("USD", SUCCEEDED, 1_000, None),
    ("USD", SUCCEEDED, 2_000, None),
    ("EUR", FAILED, 500, "card_declined"),
    ("USD", FAILED, 300, "expired_card"),
    ("EUR", SUCCEEDED, 700, None),
    ("USD", FAILED, 50, "card_declined"),
)
"""(currency, status, amount, failure_code) of the payments each test aggregates."""


async def _payments(shared: Shared) -> _Payments:
    store = await shared.store()
    tag = entities.tag()
    customer = entities.customer(TEST)
    async with store.transaction(TEST) as tx:
        await tx.insert(customer)
        for currency, status, amount, failure in PAYMENTS:
            await tx.insert(
                entities.payment(
                    TEST,
                    customer,
                    amount=amount,
                    provider=tag,
                    currency=currency,
                    status=status,
                    failure_code=failure,
                )
            )
    return _Payments(store, tag)


def _shape(groups: Sequence[Group]) -> list[tuple[dict[str, Any], int, dict[str, int]]]:
    return [(dict(g.key), g.count, dict(g.sums)) for g in groups]


async def test_groups_counts_and_sums_by_columns(shared: Shared) -> None:
    rows = await _payments(shared)
    async with rows.store.transaction(TEST, readonly=True) as tx:
        groups = await tx.aggregate(
            Payment,
            group_by=("currency", "status"),
            sums=("amount", "refunded_amount"),
            filters={"provider": rows.tag},
        )
    expected = [
        ({"currency": "EUR", "status": "failed"}, 1, {"amount": 500, "refunded_amount": 0}),
        ({"currency": "EUR", "status": "succeeded"}, 1, {"amount": 700, "refunded_amount": 0}),
        ({"currency": "USD", "status": "failed"}, 2, {"amount": 350, "refunded_amount": 0}),
        ({"currency": "USD", "status": "succeeded"}, 2, {"amount": 3000, "refunded_amount": 0}),
    ]
    expect.that(
        _shape(groups) == expected,
        f"aggregate(group_by=(currency, status), sums=(amount, refunded_amount)) of 6 payments "
        f"gave {_shape(groups)}; expected {expected}",
        FIX,
    )


async def test_filters_narrow_the_rows(shared: Shared) -> None:
    rows = await _payments(shared)
    async with rows.store.transaction(TEST, readonly=True) as tx:
        usd = await tx.aggregate(
            Payment, sums=("amount",), filters={"provider": rows.tag, "currency": "USD"}
        )
        failed = await tx.aggregate(
            Payment,
            group_by=("currency",),
            sums=("amount",),
            filters={"provider": rows.tag, "status": FAILED},
        )
    expect.that(
        _shape(usd) == [({}, 4, {"amount": 3350})],
        f"the USD payments aggregated as {_shape(usd)}: expected one group, count 4, 3350",
        FIX,
    )
    expect.that(
        _shape(failed)
        == [({"currency": "EUR"}, 1, {"amount": 500}), ({"currency": "USD"}, 2, {"amount": 350})],
        f"the failed payments by currency aggregated as {_shape(failed)}",
        FIX,
    )


async def test_groups_are_ordered_with_null_first(shared: Shared) -> None:
    rows = await _payments(shared)
    async with rows.store.transaction(TEST, readonly=True) as tx:
        groups = await tx.aggregate(
            Payment, group_by=("failure_code",), filters={"provider": rows.tag}
        )
    keys = [g.key.get("failure_code") for g in groups]
    counts = [g.count for g in groups]
    expect.that(
        keys == [None, "card_declined", "expired_card"] and counts == [3, 2, 1],
        f"grouping by failure_code gave keys {keys} with counts {counts}: expected "
        "[None, 'card_declined', 'expired_card'] (NULL first, then ascending), [3, 2, 1]",
        "ORDER BY the group_by columns ascending, NULLS FIRST (SQLite sorts NULL first by "
        "default, PostgreSQL last)",
    )


async def test_nothing_matching_is_one_group_of_zero_without_group_by(shared: Shared) -> None:
    store = await shared.store()
    nothing = {"provider": entities.tag()}
    async with store.transaction(TEST, readonly=True) as tx:
        plain = await tx.aggregate(Payment, sums=("amount",), filters=nothing)
        grouped = await tx.aggregate(
            Payment, group_by=("currency",), sums=("amount",), filters=nothing
        )
    expect.that(
        _shape(plain) == [({}, 0, {"amount": 0})],
        f"aggregate with no group_by over no rows gave {_shape(plain)}: expected exactly one "
        "group, count 0, sum 0",
        "with no group_by, answer one group even when nothing matches, its sums 0 "
        "(coalesce(sum(...), 0))",
    )
    expect.that(
        not grouped,
        f"aggregate with group_by over no rows gave {_shape(grouped)}: expected no group",
        "answer only the groups that have rows",
    )


async def test_sums_of_nulls_are_zero(shared: Shared) -> None:
    store = await shared.store()
    tag = entities.tag()
    customer = entities.customer(TEST)
    async with store.transaction(TEST) as tx:
        await tx.insert(customer)
        for brand, month in (("amex", None), ("amex", None), ("visa", 4), ("visa", None)):
            await tx.insert(
                entities.payment_method(
                    TEST, customer.id, provider=tag, brand=brand, exp_month=month
                )
            )
    async with store.transaction(TEST, readonly=True) as tx:
        groups = await tx.aggregate(
            PaymentMethod, group_by=("brand",), sums=("exp_month",), filters={"provider": tag}
        )
    expected = [({"brand": "amex"}, 2, {"exp_month": 0}), ({"brand": "visa"}, 2, {"exp_month": 4})]
    expect.that(
        _shape(groups) == expected,
        f"summing a nullable column (exp_month: NULL, NULL | 4, NULL) gave {_shape(groups)}; "
        f"expected {expected}",
        "a sum over no non-NULL value is 0, and NULLs add nothing: coalesce(sum(col), 0)",
    )


@pytest.mark.parametrize(
    ("what", "call"),
    [
        ("sums of a text column (currency)", {"sums": ("currency",)}),
        ("sums of a datetime column (created_at)", {"sums": ("created_at",)}),
        ("sums of a boolean column (livemode)", {"sums": ("livemode",)}),
        ("sums of a column the kind does not have", {"sums": ("no_such_column",)}),
        ("group_by a column the kind does not have", {"group_by": ("no_such_column",)}),
    ],
    ids=["text", "datetime", "bool", "unknown_sum", "unknown_group_by"],
)
async def test_a_bad_aggregate_is_refused(shared: Shared, what: str, call: dict[str, Any]) -> None:
    store = await shared.store()
    with expect.refusal(
        ValidationError,
        f"aggregate of payments with {what}",
        "check group_by and sums against the kind's columns (storage_rules.check_aggregate): "
        "sums only of integer columns, ValidationError naming the field",
    ):
        async with store.transaction(TEST, readonly=True) as tx:
            await tx.aggregate(Payment, **call)
