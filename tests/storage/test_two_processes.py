"""Two processes on one SQLite file: ordinary load never fails with "database is locked"."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

WRITER = textwrap.dedent(
    """
    import asyncio, sys
    import anyio
    from qzpay import create_billing
    from qzpay.adapters.fake import FakeProvider
    from qzpay.adapters.sqlite import SQLiteStorage

    async def main(path: str, name: str) -> None:
        async with create_billing(storage=SQLiteStorage(path), provider=FakeProvider()) as billing:
            async with anyio.create_task_group() as group:
                for n in range(50):
                    group.start_soon(create, billing, f"{name}{n}@example.com")

    async def create(billing, email: str) -> None:
        await billing.customers.create(email=email)

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


def test_two_processes_writing_one_file_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), name],
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("first", "second")
    ]
    for writer in writers:
        _, errors = writer.communicate(timeout=120)
        assert writer.returncode == 0, errors
    with sqlite3.connect(path) as connection:
        customers = connection.execute("SELECT count(*) FROM billing_customers").fetchone()[0]
        audits = connection.execute("SELECT count(*) FROM billing_audit_logs").fetchone()[0]
    assert (customers, audits) == (100, 100)
