"""SystemClock and FrozenClock: aware UTC only, and billing time never runs backwards."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import anyio
import pytest

from qzpay.adapters.clock import FrozenClock, SystemClock
from qzpay.contracts.clock import Clock
from qzpay.errors import ValidationError

START = datetime(2025, 1, 31, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_both_clocks_satisfy_the_clock_port() -> None:
    clocks: list[Clock] = [SystemClock(), FrozenClock(START)]
    assert all(isinstance(clock, Clock) for clock in clocks)


def test_system_clock_tells_aware_utc_wall_time() -> None:
    before = datetime.now(UTC)
    now = SystemClock().now()
    after = datetime.now(UTC)
    assert now.tzinfo is UTC
    assert before <= now <= after


def test_frozen_clock_stands_still_until_moved() -> None:
    clock = FrozenClock(START)
    assert clock.now() == START
    assert clock.now() == START


@pytest.mark.anyio
async def test_frozen_clock_does_not_move_while_tasks_sleep() -> None:
    clock = FrozenClock(START)
    await anyio.sleep(0.01)
    assert clock.now() == START


def test_frozen_clock_refuses_a_naive_start() -> None:
    with pytest.raises(ValidationError) as raised:
        FrozenClock(datetime(2025, 1, 31))
    assert raised.value.field == "start"


def test_frozen_clock_converts_another_zone_to_utc() -> None:
    buenos_aires = timezone(timedelta(hours=-3))
    clock = FrozenClock(datetime(2025, 1, 31, 9, 0, tzinfo=buenos_aires))
    assert clock.now() == START
    assert clock.now().tzinfo is UTC


def test_advance_moves_forward_and_returns_the_new_moment() -> None:
    clock = FrozenClock(START)
    assert clock.advance(timedelta(days=29)) == datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    assert clock.now() == datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    assert clock.now().tzinfo is UTC


def test_advance_by_zero_is_allowed() -> None:
    clock = FrozenClock(START)
    assert clock.advance(timedelta(0)) == START


def test_advance_refuses_to_run_time_backwards() -> None:
    clock = FrozenClock(START)
    with pytest.raises(ValidationError) as raised:
        clock.advance(timedelta(seconds=-1))
    assert raised.value.field == "delta"
    assert clock.now() == START


def test_set_may_move_anywhere_including_backwards() -> None:
    clock = FrozenClock(START)
    earlier = datetime(2024, 12, 1, tzinfo=UTC)
    assert clock.set(earlier) == earlier
    assert clock.now() == earlier
    later = datetime(2030, 6, 1, 8, 0, tzinfo=timezone(timedelta(hours=2)))
    assert clock.set(later) == datetime(2030, 6, 1, 6, 0, tzinfo=UTC)
    assert clock.now().tzinfo is UTC


def test_set_refuses_a_naive_moment_and_keeps_the_time() -> None:
    clock = FrozenClock(START)
    with pytest.raises(ValidationError) as raised:
        clock.set(datetime(2025, 2, 1))
    assert raised.value.field == "moment"
    assert clock.now() == START
