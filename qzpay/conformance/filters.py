"""Filter operators: each operator of ``qzpay.contracts.filters`` on each way rows are read.

Every operator — equality and ``None`` (IS NULL), ``below``, ``at_most``, ``above``,
``at_least``, ``within`` (lower inclusive, upper exclusive), ``one_of`` (empty: nothing),
``is_null``, ``not_null`` — is checked on ``list``, ``count``, ``find`` and ``aggregate``
(``test_operator[<operator>-<method>]``), each on a column of every type: integer, text,
enum, datetime, UUID and boolean (no ordering operators on booleans). A NULL matches no
comparison and no ``one_of``. An unknown column, or a collection given as a plain value
instead of ``one_of``, is a ``ValidationError``; ``one_of`` with 500 values works.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from datetime import timedelta
from typing import Any
from uuid import UUID

import attrs
import pytest

from qzpay.conformance import entities
from qzpay.conformance.entities import NOW
from qzpay.conformance.expect import Expectations
from qzpay.conformance.shared import Shared, module_stores
from qzpay.contracts import filters as f
from qzpay.contracts.storage import Scope, StoragePort
from qzpay.domain.enums import JobStatus
from qzpay.domain.payments import PaymentMethod
from qzpay.domain.records import IdempotencyKey, JobExecution
from qzpay.errors import ValidationError
from qzpay.ids import new_id

pytestmark = pytest.mark.anyio

expect = Expectations("filters")
TEST = Scope(livemode=False)
FIX = (
    "translate each operator exactly (qzpay.contracts.filters: lt, lte, gt, gte, "
    "lower <= col < upper, IN, IS NULL, IS NOT NULL; None is IS NULL) and apply it in the "
    "store's query; NULL matches no comparison"
)


@pytest.fixture(scope="module")
async def shared(request: pytest.FixtureRequest, anyio_backend: str) -> AsyncIterator[Shared]:
    async with module_stores(request) as stores:
        yield stores


@attrs.frozen
class Case:
    """One column of one type: rows holding ``values`` (ascending), then one holding NULL if
    the column is nullable, all marked with ``tag`` in ``tag_column``."""

    label: str
    kind: type[Any]
    column: str
    tag_column: str
    values: tuple[Any, ...]
    nullable: bool
    ordered: bool
    tag: str
    ids: tuple[UUID, ...]

    def stored(self) -> list[Any]:
        return [*self.values, *([None] if self.nullable else [])]


def _holds(condition: object, value: object) -> bool:
    """The operators' meaning, written out on its own (the suite's oracle)."""
    if not isinstance(condition, f.Condition):
        return value is None if condition is None else value == condition
    op, operand = condition.op, condition.value
    if op is f.Op.IS_NULL:
        return value is None
    if op is f.Op.NOT_NULL:
        return value is not None
    if value is None:
        return False
    compared: Any = value
    if op is f.Op.IN:
        return compared in operand
    if op is f.Op.LT:
        return bool(compared < operand)
    if op is f.Op.LTE:
        return bool(compared <= operand)
    if op is f.Op.GT:
        return bool(compared > operand)
    if op is f.Op.GTE:
        return bool(compared >= operand)
    return bool(operand[0] <= compared < operand[1])


OPERATORS: dict[str, tuple[bool, Callable[[Sequence[Any]], object]]] = {
    # name: (needs an ordered column, the filter value built from the column's values)
    "equals": (False, lambda v: v[1]),
    "equals_none": (False, lambda v: None),
    "below": (True, lambda v: f.below(v[1])),
    "at_most": (True, lambda v: f.at_most(v[1])),
    "above": (True, lambda v: f.above(v[1])),
    "at_least": (True, lambda v: f.at_least(v[1])),
    "within": (True, lambda v: f.within(v[0], v[2])),
    "one_of": (False, lambda v: f.one_of([v[0], v[-1]])),
    "one_of_empty": (False, lambda v: f.one_of([])),
    "is_null": (False, lambda v: f.is_null()),
    "not_null": (False, lambda v: f.not_null()),
}
METHODS = ("list", "count", "find", "aggregate")


async def _seed(store: StoragePort) -> list[Case]:
    tags = {name: entities.tag() for name in ("int", "text", "bool", "enum", "datetime", "uuid")}
    owners = [entities.customer(TEST) for _ in range(4)]
    rows: list[Any] = [*owners]
    cases: list[Case] = []

    def methods(label: str, column: str, values: tuple[Any, ...], nullable: bool) -> None:
        made = [
            entities.payment_method(TEST, owners[index].id, provider=tags[label], **{column: value})
            for index, value in enumerate([*values, *([None] if nullable else [])])
        ]
        rows.extend(made)
        cases.append(
            Case(
                label,
                PaymentMethod,
                column,
                "provider",
                values,
                nullable,
                label != "bool",
                tags[label],
                tuple(m.id for m in made),
            )
        )

    methods("int", "exp_month", (3, 7, 11), True)
    methods("text", "brand", ("amex", "mastercard", "visa"), True)
    methods("bool", "is_default", (False, True), False)
    statuses = (JobStatus.FAILED, JobStatus.RUNNING, JobStatus.SUCCEEDED)
    jobs = [entities.job_execution(TEST, job_name=tags["enum"], status=s) for s in statuses]
    finished = (NOW - timedelta(days=2), NOW - timedelta(days=1), NOW)
    timed = [
        entities.job_execution(TEST, job_name=tags["datetime"], finished_at=at)
        for at in (*finished, None)
    ]
    resources = tuple(sorted(new_id() for _ in range(3)))
    keys = [
        entities.idempotency_key(
            TEST, f"{tags['uuid']}-{index}", operation=tags["uuid"], resource_id=resource
        )
        for index, resource in enumerate((*resources, None))
    ]
    rows.extend((*jobs, *timed, *keys))
    cases.append(
        Case(
            "enum",
            JobExecution,
            "status",
            "job_name",
            statuses,
            False,
            True,
            tags["enum"],
            tuple(j.id for j in jobs),
        )
    )
    cases.append(
        Case(
            "datetime",
            JobExecution,
            "finished_at",
            "job_name",
            finished,
            True,
            True,
            tags["datetime"],
            tuple(j.id for j in timed),
        )
    )
    cases.append(
        Case(
            "uuid",
            IdempotencyKey,
            "resource_id",
            "operation",
            resources,
            True,
            True,
            tags["uuid"],
            tuple(k.id for k in keys),
        )
    )
    async with store.transaction(TEST) as tx:
        for row in rows:
            await tx.insert(row)
    return cases


@pytest.fixture(scope="module")
async def cases(shared: Shared) -> list[Case]:
    return await _seed(await shared.store())


async def _ids(store: StoragePort, case: Case, condition: object, method: str) -> set[UUID] | int:
    """What ``method`` answers for the case's rows filtered by ``condition``: the ids (list,
    find), or how many (count, aggregate)."""
    filters: dict[str, Any] = {case.tag_column: case.tag, case.column: condition}
    async with store.transaction(TEST, readonly=True) as tx:
        if method == "list":
            return {row.id for row in (await tx.list(case.kind, filters=filters, limit=100)).items}
        if method == "find":
            found = await tx.find(case.kind, **filters)
            return set() if found is None else {found.id}
        if method == "count":
            return await tx.count(case.kind, filters=filters)
        (group,) = await tx.aggregate(case.kind, filters=filters)
        return group.count


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("operator", list(OPERATORS))
async def test_operator(shared: Shared, cases: list[Case], operator: str, method: str) -> None:
    store = await shared.store()
    needs_order, build = OPERATORS[operator]
    for case in cases:
        if needs_order and not case.ordered:
            continue
        condition = build(case.values)
        matching = [
            row_id
            for row_id, value in zip(case.ids, case.stored(), strict=True)
            if _holds(condition, value)
        ]
        expected: set[UUID] | int
        if method in ("count", "aggregate"):
            expected = len(matching)
        elif method == "find":
            expected = {max(matching)} if matching else set()  # the newest
        else:
            expected = set(matching)
        answer = await _ids(store, case, condition, method)
        positions = {row_id: index for index, row_id in enumerate(case.ids)}
        shown = sorted(positions[i] for i in answer) if isinstance(answer, set) else answer
        wanted = sorted(positions[i] for i in expected) if isinstance(expected, set) else expected
        expect.that(
            answer == expected,
            f"{method} with {case.column} ({case.label}) {condition!r} over rows holding "
            f"{case.stored()} answered {'rows ' if isinstance(shown, list) else ''}{shown}, "
            f"expected {wanted}",
            FIX,
        )


async def _refused(store: StoragePort, method: str, filters: dict[str, Any], what: str) -> None:
    with expect.refusal(
        ValidationError,
        f"{method} with {what}",
        "check every filter before building SQL (storage_rules.check_filters): a known "
        "column, a plain value or a Condition; ValidationError naming the column",
    ):
        async with store.transaction(TEST, readonly=True) as tx:
            if method == "list":
                await tx.list(PaymentMethod, filters=filters)
            elif method == "find":
                await tx.find(PaymentMethod, **filters)
            elif method == "count":
                await tx.count(PaymentMethod, filters=filters)
            else:
                await tx.aggregate(PaymentMethod, filters=filters)


@pytest.mark.parametrize("method", METHODS)
async def test_an_unknown_column_is_refused(shared: Shared, method: str) -> None:
    store = await shared.store()
    await _refused(
        store, method, {"no_such_column": 1}, "a filter on a column payment methods lack"
    )


@pytest.mark.parametrize("method", METHODS)
async def test_a_collection_instead_of_one_of_is_refused(shared: Shared, method: str) -> None:
    store = await shared.store()
    for value in (["amex", "visa"], {"amex"}):
        await _refused(
            store, method, {"brand": value}, f"brand={value!r} (a collection, not one_of)"
        )


@pytest.mark.parametrize("method", METHODS)
async def test_one_of_many_values(shared: Shared, cases: list[Case], method: str) -> None:
    store = await shared.store()
    case = next(c for c in cases if c.label == "uuid")
    many = [new_id() for _ in range(497)] + list(case.values)
    answer = await _ids(store, case, f.one_of(many), method)
    expected: set[UUID] | int = (
        3
        if method in ("count", "aggregate")
        else {max(case.ids[:3])}
        if method == "find"
        else set(case.ids[:3])
    )
    expect.that(
        answer == expected,
        f"{method} with one_of(500 values) on {case.column} answered "
        f"{answer if isinstance(answer, int) else len(answer)} rows where 3 hold one of them "
        "(1 for find)",
        "pass one_of's values as one array parameter (= ANY(:values), or a JSON array in "
        "SQLite), not one placeholder per value",
    )
