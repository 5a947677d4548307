"""The verdict of a conformance run: one line per property, and the same as JSON.

A property **failed** if any of its tests failed or errored, **passed** if none failed and
at least one passed, is **not supported** if every test it ran was skipped because the
adapter declared an optional capability unsupported, and **not run** if none of its tests
was selected (``-k``). Skips are listed with their reasons: an optional capability the
adapter declared unsupported shows as ``not supported: <reason>``, never as a pass.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:  # the runner imports this module where pytest may not be installed
    import pytest

PROPERTIES: tuple[str, ...] = (
    "prefixes",
    "tenancy",
    "livemode",
    "soft_deletes",
    "optimistic_locking",
    "atomic_operations",
    "transactions",
    "pagination",
    "immutability",
    "aggregates",
    "filters",
    "large_transactions",
    "cross_tenant",
)
"""The properties of DESIGN §5, each a module ``qzpay.conformance.<property>``."""

NOT_SUPPORTED = "not supported: "


def property_of(module_name: str) -> str | None:
    """The property a suite module checks (``qzpay.conformance.tenancy`` → ``tenancy``)."""
    package, _, name = module_name.rpartition(".")
    if package == "qzpay.conformance" and name in PROPERTIES:
        return name
    return None


@attrs.define
class _Test:
    prop: str
    name: str
    outcome: str = "not run"  # not run | passed | failed | skipped
    message: str | None = None


def _message(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):  # a skip: (path, line, "Skipped: reason")
        return str(longrepr[2]).removeprefix("Skipped: ")
    crash = getattr(longrepr, "reprcrash", None)
    message = getattr(crash, "message", None)
    if isinstance(message, str) and message:
        return message.removeprefix("Failed: ")
    text = report.longreprtext.strip()
    return text.splitlines()[-1] if text else report.outcome


@attrs.define
class ConformanceReport:
    """Collects test outcomes by property while pytest runs, and renders the verdict."""

    factory: str
    _tests: dict[str, _Test] = attrs.field(factory=dict)

    def expect(self, nodeid: str, prop: str, name: str) -> None:
        self._tests.setdefault(nodeid, _Test(prop, name))

    def record(self, report: pytest.TestReport) -> None:
        test = self._tests.get(report.nodeid)
        if test is None or test.outcome == "failed":
            return
        if report.failed:
            test.outcome = "failed"
            phase = "" if report.when == "call" else f" (in {report.when})"
            test.message = _message(report) + phase
        elif report.skipped:
            test.outcome = "skipped"
            test.message = _message(report)
        elif report.when == "call" and test.outcome == "not run":
            test.outcome = "passed"

    def properties(self) -> dict[str, dict[str, Any]]:
        verdicts: dict[str, dict[str, Any]] = {}
        for prop in PROPERTIES:
            tests = [test for test in self._tests.values() if test.prop == prop]
            failed = [test for test in tests if test.outcome == "failed"]
            passed = [test for test in tests if test.outcome == "passed"]
            skips = Counter(test.message or "" for test in tests if test.outcome == "skipped")
            not_supported = sorted(
                reason.removeprefix(NOT_SUPPORTED)
                for reason in skips
                if reason.startswith(NOT_SUPPORTED)
            )
            skipped = {
                reason: count
                for reason, count in skips.items()
                if not reason.startswith(NOT_SUPPORTED)
            }
            if failed:
                status = "failed"
            elif passed:
                status = "passed"
            elif not_supported:
                status = "not supported"
            elif skipped:
                status = "skipped"
            else:
                status = "not run"
            verdicts[prop] = {
                "status": status,
                "passed": len(passed),
                "failed": len(failed),
                "not_supported": not_supported,
                "skipped": skipped,
                "failures": [{"test": test.name, "message": test.message} for test in failed],
            }
        return verdicts

    def lines(self) -> list[str]:
        """``prefixes: passed``, ``tenancy: failed (2)``, ``… not supported: <reason>``."""
        lines = []
        for prop, verdict in self.properties().items():
            line = f"{prop}: {verdict['status']}"
            if verdict["failed"]:
                line += f" ({verdict['failed']})"
            for reason in verdict["not_supported"]:
                line += f"; not supported: {reason}"
            for reason, count in verdict["skipped"].items():
                line += f"; skipped ({count}): {reason}"
            lines.append(line)
        return lines

    def as_json(self) -> dict[str, Any]:
        verdicts = self.properties()
        return {
            "factory": self.factory,
            "passed": all(v["status"] != "failed" for v in verdicts.values()),
            "properties": verdicts,
        }

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_json(), indent=2, sort_keys=False) + "\n")


def read(path: Path) -> Mapping[str, Any]:
    """A report file as written by ``--qzpay-report json``."""
    loaded: Mapping[str, Any] = json.loads(path.read_text())
    return loaded
