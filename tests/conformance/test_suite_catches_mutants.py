"""The conformance suite is only worth something if it fails broken adapters: each mutant in
``mutants.py`` breaks one rule, and the suite must fail it in that rule's property group
(and in no other), with a message that names the property."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from qzpay.conformance import PROPERTIES, Capabilities
from qzpay.conformance.runner import SuiteResult, run_in_subprocess
from qzpay.errors import ConfigurationError

MUTANTS: dict[str, str] = {
    "returns_soft_deleted_rows": "soft_deletes",
    "aggregate_counts_deleted_rows": "soft_deletes",
    "hard_deletes": "soft_deletes",
    "ignores_tenant_on_reads": "tenancy",
    "ignores_tenant_on_updates": "tenancy",
    "ignores_livemode_in_unique_check": "livemode",
    "aggregate_ignores_livemode": "livemode",
    "ignores_the_prefix": "prefixes",
    "writes_outside_the_prefix": "prefixes",
    "skips_the_version_check": "optimistic_locking",
    "increments_non_atomically": "atomic_operations",
    "double_claims": "atomic_operations",
    "numbers_a_block_as_one": "atomic_operations",
    "claim_bumps_the_version": "atomic_operations",
    "update_overwrites_the_lease": "atomic_operations",
    "leaves_partial_writes": "transactions",
    "readonly_allows_writes": "transactions",
    "ends_with_an_empty_page": "pagination",
    "returns_its_stored_objects": "immutability",
    "aggregate_orders_null_last": "aggregates",
    "within_includes_the_upper_bound": "filters",
    "one_of_ignores_its_values": "filters",
    "fails_above_1000_writes": "large_transactions",
    "keeps_part_of_a_large_transaction": "large_transactions",
    "sweep_ignores_livemode": "cross_tenant",
    "sweep_returns_deleted_rows": "cross_tenant",
    "closes_on_the_first_close": "transactions",
}
"""Each mutant and the property group that must catch it."""

ROOT = Path(__file__).resolve().parents[2]
SANITY = "test_stores_of_one_test_share_one_database"
"""A test every mutant passes: a mutant must break its rule, not fall over everywhere."""

RUNS: dict[str, tuple[str, tuple[str, ...]]] = {
    # The whole suite: "caught in its own group and in no other" is checked on every group.
    **{mutant: (f"make_{mutant}", ()) for mutant in MUTANTS},
    "single_connection": ("make_single_connection", ("-k", "atomic_operations")),
    "tenancy_unsupported": ("make_declares_tenancy_unsupported", ("-k", SANITY)),
}
"""Each run of the suite these tests look at: a factory in mutants.py and a selection."""

_POOL = ThreadPoolExecutor(max_workers=4)
_STARTED: dict[str, Future[SuiteResult]] = {}


def _start(name: str) -> None:
    if name not in _STARTED:
        factory, selection = RUNS[name]
        _STARTED[name] = _POOL.submit(
            run_in_subprocess,
            f"tests.conformance.mutants:{factory}",
            ["-q", *selection],
            cwd=ROOT,
            timeout=300,
        )


def _result(name: str) -> SuiteResult:
    _start(name)
    return _STARTED[name].result()


def _explain(result: SuiteResult) -> str:
    return result.output[-6000:]


@pytest.fixture(scope="module", autouse=True)
def _start_selected_runs(request: pytest.FixtureRequest) -> None:
    """Start the runs of every selected test at once, so the subprocesses overlap."""
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("mutant") in RUNS:
            _start(callspec.params["mutant"])
    _start("single_connection")
    _start("tenancy_unsupported")


@pytest.mark.parametrize("mutant", list(MUTANTS))
def test_the_suite_fails_each_mutant_in_its_own_group(mutant: str) -> None:
    group = MUTANTS[mutant]
    result = _result(mutant)
    assert result.returncode == 1, _explain(result)
    assert result.status(group) == "failed", _explain(result)
    others = {prop: result.status(prop) for prop in PROPERTIES if prop != group}
    assert "failed" not in others.values(), (others, _explain(result))
    sanity = result.report["properties"]["prefixes"]["failures"]
    assert not any(SANITY in f["test"] for f in sanity), "the mutant fails the sanity check"
    failures = result.report["properties"][group]["failures"]
    assert any(f["message"].startswith(f"{group}: ") for f in failures), failures


def test_a_declared_unsupported_capability_is_reported_not_passed() -> None:
    result = _result("single_connection")
    assert result.returncode == 0, _explain(result)
    verdict = result.report["properties"]["atomic_operations"]
    assert verdict["status"] == "passed"
    assert verdict["not_supported"] == ["this store keeps its rows in one process's memory"]
    assert (
        "atomic_operations: passed; not supported: this store keeps its rows in one process's "
        "memory" in result.output
    )


def test_mandatory_properties_cannot_be_declared_unsupported() -> None:
    for name in ("prefixes", "tenancy", "livemode", "soft_deletes"):
        with pytest.raises(ConfigurationError, match="cannot be declared unsupported"):
            Capabilities(**{name: "not here"})
    with pytest.raises(ConfigurationError, match="non-empty string"):
        Capabilities(multiple_connections=False)
    result = _result("tenancy_unsupported")
    assert result.returncode == 1
    assert "tenancy cannot be declared unsupported" in result.output


def test_the_plugin_is_inert_without_its_option(tmp_path: Path) -> None:
    (tmp_path / "test_mine.py").write_text("def test_mine() -> None:\n    pass\n")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "qzpay_conformance", "-q", "--co"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "test_mine.py::test_mine" in done.stdout
    assert "conformance" not in done.stdout


def test_an_unknown_factory_is_a_usage_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "qzpay_conformance", "--qzpay-store", "nope:make"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 4
    assert "cannot import 'nope'" in done.stderr


def test_run_returns_nonzero_when_a_property_fails() -> None:
    code = (
        "from qzpay.conformance.runner import run\n"
        "raise SystemExit(run('tests.conformance.mutants:make_hard_deletes', "
        "extra_pytest_args=['-q', '-k', 'soft_deletes']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "soft_deletes: failed" in done.stdout
