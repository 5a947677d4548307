"""The ``qzpay`` command: the demo tells its story, migrate is idempotent, bad input exits 2."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

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
    assert err.startswith("error: validation_error: table_prefix")
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
