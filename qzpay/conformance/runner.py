"""``qzpay conformance MODULE:FACTORY``: the suite as one command that fails on any failure.

``run`` is what the command does; ``run_in_subprocess`` returns the JSON verdict as well,
for an adapter's own test suite ("our store passes the conformance suite") or CI scripts.

Both run pytest in a fresh interpreter. pytest rewrites the asserts of its plugins' modules
as it imports them, and the process that runs ``qzpay conformance`` has imported anyio and
qzpay already: in-process, pytest could not and would warn
(``PytestAssertRewriteWarning: Module already imported``) on every run.

pytest is not a dependency of qzpay, only of its ``conformance`` extra: this module imports
without it, and ``run`` says in one line how to install it.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from qzpay.conformance import report
from qzpay.conformance.contract import load_factory, preflight
from qzpay.errors import ConfigurationError

INSTALL_HINT = "pip install 'qzpay[conformance]'"
USAGE_ERROR = 4
"""pytest's exit code for a usage error: the factory cannot be imported or its store opened."""


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
    the factory cannot be imported or one store from it cannot be opened (one line on
    stderr says why, instead of every test failing alike). Without pytest installed, raises
    ``ConfigurationError`` saying how to install it.
    """
    require_pytest()
    try:
        loaded = load_factory(factory)
    except ConfigurationError as error:
        print(f"qzpay conformance: {factory}: {error}", file=sys.stderr)
        return USAGE_ERROR
    problem = preflight(factory, loaded)
    if problem is not None:
        print(problem, file=sys.stderr)
        return USAGE_ERROR
    args = pytest_args(factory, report, report_file, extra_pytest_args)
    return subprocess.call([sys.executable, "-m", "pytest", *args])


def require_pytest() -> None:
    """Raise ``ConfigurationError`` (one line: what to install) when pytest is missing."""
    try:
        found = importlib.util.find_spec("pytest")
    except ImportError:
        found = None
    if found is None:
        raise ConfigurationError(
            f"the conformance suite runs on pytest, which is not installed: {INSTALL_HINT}"
        )


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
    require_pytest()
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
