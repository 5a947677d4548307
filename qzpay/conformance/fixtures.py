"""The fixtures of the conformance suite, registered by the plugin only when it is asked for.

- ``anyio_backend``: ``"asyncio"`` (SQL drivers need it); it overrides anyio's default,
  which would run every test on trio as well.
- ``conformance``: a ``Harness`` for the test: stores from the author's factory on one
  database per test, their raw views, and cleanup afterwards.
- ``connections``: ``"one_store"`` or ``"several_stores"``; the concurrency tests run once
  with each, and ``"several_stores"`` is reported as not supported when the adapter
  declares ``Capabilities(multiple_connections="<reason>")``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from qzpay.conformance.contract import StoreFactory
from qzpay.conformance.harness import Harness, make_test_id

FACTORY_KEY = pytest.StashKey[StoreFactory]()


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def conformance(request: pytest.FixtureRequest, anyio_backend: str) -> AsyncIterator[Harness]:
    harness = Harness(request.config.stash[FACTORY_KEY], make_test_id(request.node.nodeid))
    try:
        yield harness
    finally:
        await harness.aclose()


@pytest.fixture(params=["one_store", "several_stores"])
def connections(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value
