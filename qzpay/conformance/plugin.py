"""The pytest plugin entry point of the conformance suite; inert unless asked for."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("qzpay-conformance")
    group.addoption(
        "--qzpay-store",
        default=None,
        metavar="MODULE:FACTORY",
        help="run the qzpay storage conformance suite against this store factory",
    )
