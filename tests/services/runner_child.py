"""One job runner process: ``python runner_child.py '<json>'`` runs ``billing.jobs.run_due()``
once on the storage the JSON names, with its own copy of the fake provider's ledger, and
prints the run's report as JSON (``test_two_runner_processes.py`` starts two at once)."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta
from typing import Any


async def _run(config: dict[str, Any]) -> None:
    import attrs

    from qzpay import create_billing
    from qzpay.adapters.clock import FrozenClock
    from qzpay.adapters.fake import FakeProvider
    from qzpay.contracts.storage import StoragePort

    storage: StoragePort
    if config["storage"] == "sqlite":
        from qzpay.adapters.sqlite import SQLiteStorage

        storage = SQLiteStorage(config["path"])
    else:
        from qzpay.adapters.postgres import PostgresStorage

        storage = PostgresStorage(config["url"], table_prefix=config["prefix"], pool_size=2)
    provider = FakeProvider(ledger=config["ledger"], namespace=config["namespace"])
    clock = FrozenClock(datetime.fromisoformat(config["now"]))
    async with create_billing(
        storage=storage, provider=provider, clock=clock, job_lease=timedelta(minutes=5)
    ) as billing:
        report = await billing.jobs.run_due()
    print(json.dumps(attrs.asdict(report)))


def main(argv: list[str]) -> int:
    import anyio

    anyio.run(_run, json.loads(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
