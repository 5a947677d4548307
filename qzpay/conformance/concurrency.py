"""Running many tasks at once and keeping every outcome, so one failure hides no other."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import anyio
import attrs

T = TypeVar("T")


@attrs.frozen
class Outcome(Generic[T]):
    """What one task returned, or the exception it raised."""

    value: T | None = None
    error: Exception | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


async def run_concurrently(count: int, task: Callable[[int], Awaitable[T]]) -> list[Outcome[T]]:
    """Start ``task(0)`` … ``task(count - 1)`` in one task group; their outcomes in order.

    Exceptions are caught per task (a cancellation is not), so the test can look at all of
    them; checks belong after this returns, never inside a task.
    """
    outcomes: list[Outcome[T] | None] = [None] * count

    async def one(index: int) -> None:
        try:
            outcomes[index] = Outcome(value=await task(index))
        except Exception as error:
            outcomes[index] = Outcome(error=error)

    async with anyio.create_task_group() as group:
        for index in range(count):
            group.start_soon(one, index)
    return [outcome for outcome in outcomes if outcome is not None]


def errors_of(outcomes: Sequence[Outcome[T]]) -> list[Exception]:
    return [outcome.error for outcome in outcomes if outcome.error is not None]


def describe(errors: Sequence[BaseException], limit: int = 3) -> str:
    """A short account of unexpected errors: their types and the first messages."""
    if not errors:
        return "no errors"
    shown = "; ".join(f"{type(error).__name__}: {error}" for error in errors[:limit])
    more = f" (and {len(errors) - limit} more)" if len(errors) > limit else ""
    return f"{len(errors)} error(s): {shown}{more}"
