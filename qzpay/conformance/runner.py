"""``qzpay conformance MODULE:FACTORY``: the suite as one command that fails on any failure.

``run`` runs the suite in this process (what the command does); ``run_in_subprocess`` runs it
in a fresh interpreter and returns the JSON verdict as well, for an adapter's own test suite
("our store passes the conformance suite") or CI scripts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest

from qzpay.conformance import report


def pytest_args(
    factory: str,
    report: str | None = None,
    report_file: str | None = None,
    extra_pytest_args: Sequence[str] = (),
) -> list[str]:
    """The pytest command line that runs the suite against ``factory``."""
    args = ["-p", "anyio", "-p", "qzpay_conformance", "--qzpay-store", factory]
    if report is not None:
        args += ["--qzpay-report", report]
    if report_file is not None:
        args += ["--qzpay-report-file", report_file]
    return [*args, *extra_pytest_args]


def run(
    factory: str,
    report: str | None = None,
    report_file: str | None = None,
    extra_pytest_args: Sequence[str] = (),
) -> int:
    """Run the conformance suite against ``factory``; 0 only if no test failed.

    ``report="json"`` also writes the verdict to ``report_file`` (default
    ``conformance-report.json``); ``extra_pytest_args`` go to pytest as they are
    (``["-k", "tenancy", "-x"]``). The exit code is pytest's: 1 when a test failed, 4 when
    the factory cannot be imported.
    """
    return int(pytest.main(pytest_args(factory, report, report_file, extra_pytest_args)))


@attrs.frozen
class SuiteResult:
    """A finished run: pytest's exit code, the JSON verdict, and what it printed."""

    returncode: int
    report: Mapping[str, Any]
    output: str

    def status(self, prop: str) -> str:
        """``passed``, ``failed``, ``not supported``, ``skipped`` or ``not run``."""
        verdict: str = self.report["properties"][prop]["status"]
        return verdict


def run_in_subprocess(
    factory: str,
    extra_pytest_args: Sequence[str] = (),
    *,
    cwd: str | Path | None = None,
    timeout: float | None = None,
) -> SuiteResult:
    """Run the suite against ``factory`` in a fresh Python (``cwd`` must let it import the
    factory's module) and return its verdict."""
    with tempfile.TemporaryDirectory(prefix="qzpay-conformance-") as directory:
        report_file = Path(directory) / "report.json"
        args = pytest_args(factory, "json", str(report_file), extra_pytest_args)
        done = subprocess.run(
            [sys.executable, "-m", "pytest", *args],
            cwd=cwd or os.getcwd(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        output = done.stdout + done.stderr
        if not report_file.exists():
            raise RuntimeError(
                f"the conformance run wrote no report (exit {done.returncode}):\n{output[-4000:]}"
            )
        return SuiteResult(done.returncode, report.read(report_file), output)
