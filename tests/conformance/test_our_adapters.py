"""Our own adapters pass the whole conformance suite, run as an adapter author runs it.

PostgreSQL runs when ``QZPAY_TEST_POSTGRES_URL`` answers; otherwise the test is skipped with
the reason, unless ``QZPAY_REQUIRE_POSTGRES=1`` (CI), which makes it fail instead.
"""

from __future__ import annotations

import asyncio
import functools
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from qzpay.conformance import PROPERTIES
from qzpay.conformance.factories import postgres_url
from qzpay.conformance.runner import SuiteResult, run_in_subprocess

ROOT = Path(__file__).resolve().parents[2]
ADAPTERS = ("memory", "sqlite", "postgres")
_POOL = ThreadPoolExecutor(max_workers=3)
_STARTED: dict[str, Future[SuiteResult]] = {}


def _start(adapter: str) -> None:
    if adapter not in _STARTED:
        _STARTED[adapter] = _POOL.submit(
            run_in_subprocess,
            f"qzpay.conformance.factories:{adapter}",
            ["-q"],
            cwd=ROOT,
            timeout=300,
        )


@functools.cache
def _postgres_answers() -> str | None:
    """Why PostgreSQL cannot be used, or ``None`` when it answers."""
    try:
        import asyncpg

        from qzpay.adapters.postgres import asyncpg_dsn
    except ImportError as error:
        return f"cannot import the PostgreSQL adapter: {error}"

    async def ping() -> None:
        connection = await asyncpg.connect(asyncpg_dsn(postgres_url()), timeout=3)
        await connection.close()

    try:
        asyncio.run(ping())
    except Exception as error:
        return f"no PostgreSQL at QZPAY_TEST_POSTGRES_URL ({type(error).__name__}: {error})"
    return None


@pytest.fixture(scope="module", autouse=True)
def _start_selected_runs(request: pytest.FixtureRequest) -> None:
    """Start the runs of every selected adapter at once, so the subprocesses overlap."""
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        adapter = callspec.params.get("adapter") if callspec is not None else None
        if adapter in ADAPTERS and (adapter != "postgres" or _postgres_answers() is None):
            _start(adapter)


@pytest.mark.parametrize(
    "adapter", ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_our_adapter_passes_the_whole_suite(adapter: str) -> None:
    if adapter == "postgres":
        reason = _postgres_answers()
        if reason is not None:
            if os.environ.get("QZPAY_REQUIRE_POSTGRES") == "1":
                pytest.fail(f"QZPAY_REQUIRE_POSTGRES=1 but {reason}")
            pytest.skip(reason)
    _start(adapter)
    result = _STARTED[adapter].result()
    verdicts = result.report["properties"]
    failed = {
        f["test"].split("[")[0]: f["message"]
        for prop in PROPERTIES
        for f in verdicts[prop]["failures"]
    }
    assert not failed, result.output[-6000:]
    for prop in PROPERTIES:
        assert verdicts[prop]["status"] == "passed", (prop, verdicts[prop])
        assert not verdicts[prop]["not_supported"], (prop, verdicts[prop])
    assert result.returncode == 0, result.output[-6000:]
