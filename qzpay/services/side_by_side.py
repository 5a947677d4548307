"""Work on many items side by side, a bounded number at once.

A task per item (with a limiter) is the obvious shape, but a batch's hundred provider
calls then cost a hundred task starts, which in anyio is more than the call itself takes
against a fast provider. ``at_most`` starts as many workers as may run at once, and they
take the items in order; a worker that fails stops the group, as a task per item would.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

import anyio

T = TypeVar("T")


async def at_most(
    concurrency: int, items: Iterable[T], work: Callable[[T], Awaitable[None]]
) -> None:
    """``await work(item)`` for every item, ``concurrency`` at once at most.

    >>> import anyio
    >>> seen = []
    >>> async def work(item: int) -> None:
    ...     seen.append(item)
    >>> anyio.run(at_most, 2, range(5), work)
    >>> sorted(seen)
    [0, 1, 2, 3, 4]
    """
    queue = list(items)
    if not queue:
        return
    pending = iter(queue)  # shared: a worker takes the next item when it is done with one

    async def worker() -> None:
        for item in pending:
            await work(item)

    async with anyio.create_task_group() as group:
        for _ in range(min(concurrency, len(queue))):
            group.start_soon(worker)
