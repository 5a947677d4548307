"""Every service and storage test that runs on memory runs on SQLite and PostgreSQL too.

The service tests once ran on memory and SQLite only, which is how several default payment
methods on PostgreSQL went unseen; this keeps a new fixture or test from quietly dropping
an adapter again.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_each_memory_test_also_runs_on_sqlite_and_postgres() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--co", "-q", "tests/services", "tests/storage"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    ids = {line for line in done.stdout.splitlines() if "::" in line}
    on_memory = {test for test in ids if re.search(r"[\[-]memory[\]-]", test)}
    assert len(on_memory) > 50, done.stdout

    missing = {
        test.replace("memory", adapter)
        for test in on_memory
        for adapter in ("sqlite", "postgres")
        if test.replace("memory", adapter) not in ids
    }
    assert not missing, sorted(missing)
