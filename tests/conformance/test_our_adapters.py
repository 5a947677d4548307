"""Our own adapters pass the conformance suite, and ``qzpay conformance`` works as installed.

Besides the tests below, this module holds the whole suite run on memory, SQLite and
PostgreSQL, one result per test and adapter (``conftest.py`` collects each property module
here). The tests below run the command end to end, as an adapter author would, in a fresh
process: once on memory, once without pytest, once with the database down.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

from qzpay.conformance import PROPERTIES
from qzpay.conformance.runner import INSTALL_HINT

ROOT = Path(__file__).resolve().parents[2]

HIDE_PYTEST = """
import sys
from importlib.abc import MetaPathFinder


class HidePytest(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("pytest", "_pytest"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, HidePytest())
from qzpay.cli import main

sys.exit(main(sys.argv[1:]))
"""
"""``qzpay`` as on an install without pytest (without uninstalling it from this venv)."""


def _qzpay(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qzpay", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_the_command_certifies_the_memory_store_without_warnings(tmp_path: Path) -> None:
    done = _qzpay("conformance", "qzpay.conformance.factories:memory", "--", "-q", cwd=tmp_path)

    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    for prop in PROPERTIES:
        assert f"\n{prop}: passed" in done.stdout, (prop, output[-6000:])
    assert "not supported" not in done.stdout
    assert "Warning" not in output, output[-6000:]


def test_without_pytest_the_command_says_in_one_line_what_to_install(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", HIDE_PYTEST, "conformance", "qzpay.conformance.factories:memory"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert "pip install 'qzpay[conformance]'" in lines[0]


def test_the_extra_it_names_installs_pytest_and_dev_includes_it() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert INSTALL_HINT == "pip install 'qzpay[conformance]'"
    assert any(requirement.startswith("pytest") for requirement in extras["conformance"])
    assert any(
        requirement.startswith("qzpay[") and "conformance" in requirement
        for requirement in extras["dev"]
    )


def test_with_the_database_down_the_command_prints_one_line(tmp_path: Path) -> None:
    url = f"postgresql://postgres@127.0.0.1:{_closed_port()}/test"
    done = _qzpay(
        "conformance",
        "qzpay.conformance.factories:postgres",
        cwd=tmp_path,
        env={"QZPAY_TEST_POSTGRES_URL": url},
    )

    assert done.returncode == 4, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "qzpay conformance: cannot open the store from qzpay.conformance.factories:postgres: "
        + done.stderr.split(": ", 2)[2].rstrip("\n")
    ]
    assert "cannot connect to PostgreSQL" in done.stderr


def test_the_plugin_with_the_database_down_stops_before_any_test(tmp_path: Path) -> None:
    url = f"postgresql://postgres@127.0.0.1:{_closed_port()}/test"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "qzpay_conformance",
            "--qzpay-store",
            "qzpay.conformance.factories:postgres",
        ],
        cwd=tmp_path,
        env={**os.environ, "QZPAY_TEST_POSTGRES_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 4, done.stdout[-3000:] + done.stderr[-3000:]
    assert [line for line in done.stderr.splitlines() if line.strip()] == [
        "ERROR: qzpay conformance: cannot open the store from "
        "qzpay.conformance.factories:postgres: " + done.stderr.split("postgres: ", 1)[1].strip()
    ]
    assert "cannot connect to PostgreSQL" in done.stderr
