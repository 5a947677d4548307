"""A real PostgreSQL for these tests: skipped without a server, failed when CI requires one.

Each test gets its own table prefix and drops what it created, so tests never see each
other's rows and can run against a shared database.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest

from qzpay.conformance.factories import drop_prefix

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def postgres_url() -> str:
    url = os.environ.get("QZPAY_TEST_POSTGRES_URL", DEFAULT_URL)
    try:
        connection = await asyncpg.connect(url, timeout=5)
    except (OSError, asyncpg.PostgresError) as error:
        if os.environ.get("QZPAY_REQUIRE_POSTGRES") == "1":
            pytest.fail(
                f"PostgreSQL is required (QZPAY_REQUIRE_POSTGRES=1) but {url} said: {error}"
            )
        pytest.skip(f"no PostgreSQL at {url}: {error}")
    await connection.close()
    return url


async def drop_prefixed(url: str, *prefixes: str) -> None:
    for prefix in prefixes:
        await drop_prefix(url, prefix)


@pytest.fixture
async def prefix(postgres_url: str) -> AsyncIterator[str]:
    """A table prefix no other test uses, dropped afterwards (and its `_b` sibling)."""
    name = f"t{secrets.token_hex(4)}_"
    yield name
    await drop_prefixed(postgres_url, name, name + "b_")
