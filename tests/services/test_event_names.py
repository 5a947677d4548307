"""One registry of event names: subscriptions to a typo fail, emissions of a stray name fail,
and docs/events.md lists exactly the registry."""

from __future__ import annotations

import ast
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import qzpay
from qzpay import Billing, Event, ValidationError
from qzpay.adapters.clock import FrozenClock
from qzpay.adapters.events import InProcessEventBus
from qzpay.domain.customers import Customer
from qzpay.domain.records import AuditLog
from qzpay.event_names import EVENTS, check_event_name
from qzpay.services.context import ServiceContext

pytestmark = pytest.mark.anyio

CountRows = Callable[[Billing, type[Any]], Awaitable[int]]
PACKAGE = Path(qzpay.__file__).parent
EVENTS_DOC = PACKAGE.parent / "docs" / "events.md"


def _ignore(event: Event) -> None:
    return None


async def test_a_typo_in_billing_on_names_the_closest_event(billing: Billing) -> None:
    with pytest.raises(ValidationError) as error:
        billing.on("payment.succeded", _ignore)

    assert error.value.field == "event_type"
    assert error.value.rule == "known_event"
    assert "did you mean 'payment.succeeded'?" in str(error.value)


async def test_a_name_like_no_event_points_at_the_list(billing: Billing) -> None:
    with pytest.raises(ValidationError) as error:
        billing.on("zzz", _ignore)

    assert "docs/events.md" in str(error.value)


async def test_a_name_that_is_not_text_is_refused(billing: Billing) -> None:
    with pytest.raises(ValidationError) as error:
        billing.on(42, _ignore)  # type: ignore[arg-type]

    assert error.value.rule == "known_event"


async def test_every_registered_name_and_the_wildcard_can_be_subscribed(
    billing: Billing,
) -> None:
    received: list[str] = []

    def handler(name: str) -> Callable[[Event], None]:
        return lambda event: received.append(name)

    for name in (*EVENTS, "*"):
        billing.on(name, handler(name))

    await billing.customers.create(email="ann@example.com")

    assert sorted(received) == ["*", "customer.created"]


def test_check_event_name_returns_a_known_name() -> None:
    assert check_event_name("refund.failed") == "refund.failed"
    assert check_event_name("*") == "*"


async def test_recording_an_unregistered_name_is_refused_before_anything_is_written(
    billing: Billing, clock: FrozenClock, count_rows: CountRows
) -> None:
    ann = await billing.customers.create(email="ann@example.com")
    context = ServiceContext(
        storage=billing.storage,
        provider=billing.provider,
        clock=clock,
        events=InProcessEventBus(),
        livemode=False,
        tenant_id=None,
        multi_tenant=False,
    )

    with pytest.raises(ValueError, match=r"customer\.exploded"):
        async with context.unit_of_work() as uow:
            await uow.record("customer.exploded", ann)

    assert await count_rows(billing, AuditLog) == 1
    assert await count_rows(billing, Customer) == 1


def test_every_registered_name_has_a_description() -> None:
    assert all(re.fullmatch(r"[a-z_]+\.[a-z_]+", name) for name in EVENTS)
    assert all(description.strip() for description in EVENTS.values())


def _documented() -> list[str]:
    text = EVENTS_DOC.read_text(encoding="utf-8")
    return re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \|", text, flags=re.MULTILINE)


def test_docs_events_md_lists_exactly_the_registry() -> None:
    documented = _documented()

    assert len(documented) == len(set(documented)), "an event is listed twice"
    assert set(documented) == set(EVENTS)


def _literal_names() -> set[tuple[str, str]]:
    """Every event name written as a literal in qzpay: ``record("x.y", ...)`` and
    ``event="x.y"`` (``ServiceContext.change``), with the file it is in."""
    found: set[tuple[str, str]] = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else None
            values: list[ast.expr] = []
            if name == "record" and node.args:
                values.append(node.args[0])
            values += [keyword.value for keyword in node.keywords if keyword.arg == "event"]
            for value in values:
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    found.add((value.value, str(path.relative_to(PACKAGE))))
    return found


def test_every_name_qzpay_records_is_registered() -> None:
    names = _literal_names()

    assert names, "found no recorded event name: the scan is broken"
    assert sorted((name, where) for name, where in names if name not in EVENTS) == []
