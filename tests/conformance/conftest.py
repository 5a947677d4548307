"""The conformance suite inside this project's own test run, on each of our adapters.

An adapter author runs the suite through its plugin (``qzpay conformance``), which reports
one verdict per property. Here each of the suite's tests is an ordinary test result of
ours, once per adapter: ``test_our_adapters.py`` collects, besides its own tests, every
module of ``qzpay.conformance.report.PROPERTIES`` as a child module, so a new property
module is picked up without an edit here::

    tests/conformance/test_our_adapters.py::tenancy::test_tenant_scope[memory-get]

    pytest tests/conformance -k tenancy          # each tenancy test on each adapter

Each property stays its own module (not ``from qzpay.conformance.tenancy import *`` into one
namespace) because the property modules each define a module-scoped ``shared`` fixture of
the same name.

The adapter is a module-scoped param (``conformance_adapter``). The suite's fixtures find
their factory in ``config.stash[FACTORY_KEY]``, where the plugin puts the author's; here the
param puts ours there. Every suite fixture depends on ``anyio_backend``, which here depends
on the param, so pytest builds each module's shared stores once per adapter and in order.
PostgreSQL skips (or, with ``QZPAY_REQUIRE_POSTGRES=1``, fails) without a server.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from qzpay.conformance import factories, plugin
from qzpay.conformance.contract import StoreFactory
from qzpay.conformance.fixtures import FACTORY_KEY
from qzpay.conformance.fixtures import conformance as conformance  # the suite's fixtures
from qzpay.conformance.fixtures import connections as connections
from qzpay.conformance.report import PROPERTIES

HERE = Path(__file__).resolve().parent
HOST = HERE / "test_our_adapters.py"
"""The test module the suite's modules are collected under."""

FACTORIES: dict[str, StoreFactory] = {
    "memory": factories.memory,
    "sqlite": factories.sqlite,
    "postgres": factories.postgres,
}


@pytest.fixture(
    scope="module",
    params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def conformance_adapter(request: pytest.FixtureRequest) -> Iterator[str]:
    adapter: str = request.param
    if adapter == "postgres":
        request.getfixturevalue("postgres_available")
    request.config.stash[FACTORY_KEY] = FACTORIES[adapter]
    try:
        yield adapter
    finally:
        del request.config.stash[FACTORY_KEY]


@pytest.fixture(scope="module")
def anyio_backend(conformance_adapter: str) -> str:
    return "asyncio"


class _OurAdapters(pytest.Module):
    """``test_our_adapters.py``, with each property module of the suite as a child."""

    def collect(self) -> Iterable[pytest.Item | pytest.Collector]:
        yield from super().collect()
        for prop in PROPERTIES:
            yield pytest.Module.from_parent(
                self,
                path=plugin.SUITE_DIR / f"{prop}.py",
                name=prop,
                nodeid=f"{self.nodeid}::{prop}",
            )


def pytest_pycollect_makemodule(
    module_path: Path, parent: pytest.Collector
) -> pytest.Module | None:
    if module_path.resolve() == HOST:
        return _OurAdapters.from_parent(parent, path=module_path)
    return None
