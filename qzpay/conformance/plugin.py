"""The pytest plugin of the conformance suite; inert unless asked for.

Registered as the ``pytest11`` entry point ``qzpay_conformance``, so every pytest run in an
environment with qzpay installed loads it; it only adds its options. Given
``--qzpay-store MODULE:FACTORY`` it:

1. imports the factory and opens one store from it (a usage error, one line, if either
   fails: a database that is down would otherwise fail every test alike);
2. registers the suite's fixtures (``qzpay.conformance.fixtures``) and makes sure anyio's
   pytest plugin is there to run the async tests;
3. adds the suite's modules, ``qzpay/conformance/<property>.py`` of the INSTALLED package, to
   the paths pytest collects. Explicit paths are collected whatever the project's
   ``python_files`` pattern, so this works from site-packages as from a checkout. Paths
   given on the command line are kept; otherwise the suite replaces ``testpaths``;
4. tallies outcomes by property and, at the end, prints one line per property
   (``--qzpay-report json`` also writes them to ``--qzpay-report-file``).

    pytest -p qzpay_conformance --qzpay-store mypkg.store:make_store
    pytest --qzpay-store mypkg.store:make_store -k tenancy --qzpay-report json
"""

from __future__ import annotations

from pathlib import Path

import pytest

from qzpay.conformance.contract import load_factory, preflight
from qzpay.conformance.report import PROPERTIES, ConformanceReport, property_of
from qzpay.errors import ConfigurationError

SUITE_DIR = Path(__file__).resolve().parent
REPORT_KEY = pytest.StashKey[ConformanceReport]()


def suite_paths() -> list[str]:
    """The suite's modules in the installed package, one per property."""
    return [str(SUITE_DIR / f"{prop}.py") for prop in PROPERTIES]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("qzpay-conformance", "qzpay storage conformance suite")
    group.addoption(
        "--qzpay-store",
        default=None,
        metavar="MODULE:FACTORY",
        help="run the qzpay storage conformance suite against this store factory",
    )
    group.addoption(
        "--qzpay-report",
        default=None,
        choices=("json",),
        help="also write the per-property verdict as a file (format: json)",
    )
    group.addoption(
        "--qzpay-report-file",
        default="conformance-report.json",
        metavar="PATH",
        help="where --qzpay-report writes (default: conformance-report.json)",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    spec = config.getoption("qzpay_store")
    if not spec:
        return
    try:
        factory = load_factory(spec)
    except ConfigurationError as error:
        raise pytest.UsageError(f"--qzpay-store {spec}: {error}") from None
    if not config.option.collectonly:
        problem = preflight(spec, factory)
        if problem is not None:
            raise pytest.UsageError(problem)
    _ensure_anyio(config)
    # Imported only when asked for: the fixtures pull in SQLAlchemy for the raw view.
    from qzpay.conformance import fixtures

    config.stash[fixtures.FACTORY_KEY] = factory
    config.pluginmanager.register(fixtures, "qzpay_conformance_fixtures")
    report = ConformanceReport(factory=spec)
    config.stash[REPORT_KEY] = report
    config.pluginmanager.register(_Reporter(config, report), "qzpay_conformance_reporter")
    if config.args_source == pytest.Config.ArgsSource.ARGS:
        config.args.extend(suite_paths())
    else:
        config.args[:] = suite_paths()
        config.args_source = pytest.Config.ArgsSource.ARGS


def _ensure_anyio(config: pytest.Config) -> None:
    """anyio's plugin runs the async tests; with plugin autoloading off it must be asked for."""
    if not config.pluginmanager.has_plugin("anyio"):
        raise pytest.UsageError(
            "--qzpay-store needs anyio's pytest plugin, which is not loaded "
            "(PYTEST_DISABLE_PLUGIN_AUTOLOAD?): add -p anyio"
        )


class _Reporter:
    """Hooks that tally the run by property and print (and write) the verdict."""

    def __init__(self, config: pytest.Config, report: ConformanceReport) -> None:
        self.config = config
        self.report = report

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            module = getattr(item, "module", None)
            prop = property_of(getattr(module, "__name__", ""))
            if prop is not None:
                self.report.expect(item.nodeid, prop, item.name)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.report.record(report)

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        terminalreporter.section(f"qzpay conformance: {self.report.factory}")
        for line in self.report.lines():
            terminalreporter.write_line(line)
        if self.config.getoption("qzpay_report") == "json":
            terminalreporter.write_line(f"report: {self._report_path()}")

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self) -> None:
        if self.config.getoption("qzpay_report") == "json":
            self.report.write(self._report_path())

    def _report_path(self) -> Path:
        path = Path(self.config.getoption("qzpay_report_file"))
        if not path.is_absolute():
            path = self.config.invocation_params.dir / path
        return path
