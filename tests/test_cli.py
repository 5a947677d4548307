"""The ``qzpay`` command: the demo tells its story, migrate is idempotent, bad input exits 2."""

from __future__ import annotations

import importlib.metadata
import json
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from qzpay.adapters.sql import migrations
from qzpay.cli import main


def _tables(path: Path) -> set[str]:
    with closing(sqlite3.connect(path)) as connection:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {name for (name,) in rows}


def test_demo_tells_the_trial_ending_and_the_first_charge(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--db", str(tmp_path / "d.db")]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert any(line.startswith("Created customer Ann <ann@example.com>") for line in lines)
    assert "USD 29.00 per month" in out
    assert "USD 290.00 per year" in out
    trialing = next(i for i, line in enumerate(lines) if ": trialing, period 2028-01-31" in line)
    active = next(i for i, line in enumerate(lines) if ": active, period 2028-02-14" in line)
    assert trialing < active
    assert "Payment of USD 29.00 succeeded" in out
    assert "trials ended 1, charged 1, failed 0" in out
    assert "Charged a one-off setup fee of USD 49.00: succeeded" in out
    assert "answered from the stored result, the same payment" in out
    assert "Refunded USD 10.00 of it: refund succeeded, payment partially_refunded" in out
    assert "with SAVE20: active, charged USD 232.00 instead of USD 290.00" in out
    # The rest of its life: renewal, a declining card, dunning, recovery, yearly, the end.
    story = [
        "The period ended and renewed",
        "invoice INV-000001 paid",
        "The next renewal",
        "invoice INV-000002 open",
        "The first dunning retry",
        "The second dunning retry",
        "invoice INV-000002 paid",
        "Changed to the yearly price",
        "invoice INV-000003 paid",
        "Asked to cancel at the end of the period",
        "The period ended: ",
    ]
    at = [next(i for i, line in enumerate(lines) if part in line) for part in story]
    assert at == sorted(at)
    assert lines[at[-1]].endswith(": canceled")


def test_demo_json_prints_one_parsable_object_per_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--json", "--db", str(tmp_path / "d.db")]) == 0
    steps = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_name = {step["step"]: step for step in steps}
    assert by_name["customer_created"]["email"] == "ann@example.com"
    assert by_name["subscription_created"]["status"] == "trialing"
    assert by_name["subscription_read"]["status"] == "active"
    assert by_name["subscription_read"]["current_period_end"] == "2028-03-14T09:00:00+00:00"
    assert by_name["jobs_ran"] == {"step": "jobs_ran", "trials_ended": 1, "charged": 1, "failed": 0}
    assert by_name["payment"]["amount"] == 2900
    assert by_name["audit"]["rows"] > 0
    assert by_name["payment_retried"]["same_payment"] is True
    assert by_name["one_off_payment"]["id"] == by_name["payment_retried"]["id"]
    assert (by_name["refund"]["amount"], by_name["refund"]["refunded_amount"]) == (1000, 1000)
    assert by_name["subscription_with_promo_code"]["charged"] == 23200
    assert by_name["renewal_failed"]["status"] == "past_due"
    assert by_name["recovered"]["status"] == "active"
    assert by_name["paid_invoice"]["number"] == "INV-000002"
    assert by_name["change_invoice"]["lines"][0] < 0  # the unused month credited
    assert by_name["ended"]["status"] == "canceled"


def test_demo_refuses_a_database_that_already_holds_a_story(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "d.db"
    assert main(["demo", "--db", str(db)]) == 0
    capsys.readouterr()
    assert main(["demo", "--db", str(db)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_demo_refuses_a_database_in_a_missing_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--db", str(tmp_path / "missing" / "d.db")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_demo_runs_as_a_program_on_a_temporary_database(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "qzpay.cli", "demo"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "active" in done.stdout
    assert list(tmp_path.iterdir()) == []  # the temporary database went with its directory


def test_migrate_creates_the_schema_once_and_then_has_nothing_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "m.db"
    assert main(["migrate", "--url", f"sqlite:///{db}"]) == 0
    assert "Created the qzpay schema" in capsys.readouterr().out
    assert main(["migrate", "--url", f"sqlite:///{db}"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert {"billing_customers", "billing_subscriptions", "billing_migrations"} <= _tables(db)


def test_migrate_honors_the_prefix_and_tenancy(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    assert main(["migrate", "--url", f"sqlite:///{db}", "--prefix", "acme_", "--multi-tenant"]) == 0
    assert "acme_customers" in _tables(db)
    assert "billing_customers" not in _tables(db)
    with closing(sqlite3.connect(db)) as connection:
        columns = {row[1] for row in connection.execute("PRAGMA table_info(acme_customers)")}
    assert "tenant_id" in columns


def test_migrate_refuses_a_hostile_prefix_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "m.db"
    assert main(["migrate", "--url", f"sqlite:///{db}", "--prefix", "x; drop table"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: validation_error: --prefix: must match")
    assert "Traceback" not in err
    assert not db.exists()


@pytest.mark.parametrize("url", ["mysql://root@localhost/db", "billing.db", "http://x"])
def test_migrate_refuses_an_unknown_scheme(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate", "--url", url]) == 2
    assert "unsupported scheme" in capsys.readouterr().err


def test_conformance_certifies_the_memory_store_and_writes_the_report(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "qzpay",
            "conformance",
            "qzpay.conformance.factories:memory",
            "--report",
            "json",
            "--report-file",
            str(report),
            "--",
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    verdicts = json.loads(report.read_text())["properties"]
    assert {name: verdict["status"] for name, verdict in verdicts.items()} == dict.fromkeys(
        verdicts, "passed"
    )
    assert "tenancy: passed" in done.stdout


def test_conformance_wants_module_colon_factory(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["conformance", "mypkg.store"]) == 2
    assert "MODULE:FACTORY" in capsys.readouterr().err


def test_a_missing_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: qzpay" in capsys.readouterr().err


# -- migrate: what it found and reached, tenancy, files left behind ----------------------


def _version_1(path: Path, prefix: str = "billing_", multi_tenant: bool = False) -> None:
    """A database as qzpay's version 1 left it (its frozen DDL, stamped version 1)."""
    layout = migrations.Layout(prefix, multi_tenant, "sqlite")
    with closing(sqlite3.connect(path)) as connection:
        for statement in migrations.MIGRATIONS[0].statements(layout):
            connection.execute(statement)
        connection.execute(
            f"INSERT INTO {prefix}migrations VALUES (1, 'initial schema', '2027-01-01 00:00:00')"
        )
        connection.commit()


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"qzpay {importlib.metadata.version('qzpay')}"


def test_migrate_says_which_version_it_found_and_reached(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    latest = migrations.LATEST_VERSION
    new, old = tmp_path / "new.db", tmp_path / "old.db"
    assert main(["migrate", "--url", f"sqlite:///{new}"]) == 0
    assert capsys.readouterr().out == (
        f"Created the qzpay schema, version {latest}, in {new} (prefix billing_, single-tenant)\n"
    )
    assert main(["migrate", "--url", f"sqlite:///{new}"]) == 0
    assert capsys.readouterr().out == (
        f"The qzpay schema in {new} (prefix billing_, single-tenant) is up to date "
        f"(version {latest}): nothing to do\n"
    )
    _version_1(old)
    assert main(["migrate", "--url", f"sqlite:///{old}"]) == 0
    assert capsys.readouterr().out == (
        f"Upgraded the qzpay schema in {old} (prefix billing_, single-tenant) "
        f"from version 1 to {latest}\n"
    )


def test_migrate_never_changes_tenancy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "m.db"
    assert main(["migrate", "--url", f"sqlite:///{db}"]) == 0
    capsys.readouterr()
    assert main(["migrate", "--url", f"sqlite:///{db}", "--multi-tenant"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(
        f"error: configuration_error: the qzpay schema under prefix 'billing_' in {db} is "
        f"single-tenant (version {migrations.LATEST_VERSION}), but this store was asked for "
        "multi_tenant=True"
    )
    assert "qzpay migrate never changes tenancy: drop --multi-tenant" in captured.err
    with closing(sqlite3.connect(db)) as connection:
        columns = {row[1] for row in connection.execute("PRAGMA table_info(billing_customers)")}
    assert "tenant_id" not in columns


def test_migrate_refuses_an_older_schema_of_the_other_tenancy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "m.db"
    _version_1(db, multi_tenant=True)
    assert main(["migrate", "--url", f"sqlite:///{db}"]) == 1
    err = capsys.readouterr().err
    assert "is multi-tenant (version 1)" in err
    assert "add --multi-tenant" in err
    with closing(sqlite3.connect(db)) as connection:
        assert connection.execute("SELECT max(version) FROM billing_migrations").fetchone() == (1,)


@pytest.mark.parametrize("used_first", [False, True], ids=["new_file", "used_in_wal_mode"])
def test_migrate_leaves_no_wal_or_shm_files_behind(tmp_path: Path, used_first: bool) -> None:
    db = tmp_path / "m.db"
    if used_first:
        _version_1(db)
        with closing(sqlite3.connect(db)) as connection:  # as a running app leaves it
            assert connection.execute("PRAGMA journal_mode = WAL").fetchone() == ("wal",)
    assert main(["migrate", "--url", f"sqlite:///{db}"]) == 0
    assert main(["migrate", "--url", f"sqlite:///{db}"]) == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["m.db"]


def test_migrate_names_the_url_option_in_a_bad_sqlite_url(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["migrate", "--url", "sqlite://relative.db"]) == 1
    assert capsys.readouterr().err.startswith("error: validation_error: --url: must look like")
