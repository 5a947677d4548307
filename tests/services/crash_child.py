"""The process ``test_crash_safety.py`` kills: one money flow, cut short by SIGKILL.

Run as ``python crash_child.py '<json>'``. The JSON says which storage to open (a SQLite
file, or a PostgreSQL url and table prefix), the fake provider's ledger file, the frozen
"now", the flow (``process``, ``subscribe``, ``subscribe_managed`` (a provider-managed
subscription), ``refund``, or ``renew``: the job runner renewing what is due, on rows the
parent made), and
where the process dies: ``after`` the provider did the work (the ledger is written) but
before qzpay heard the answer, or ``before`` the provider is called at all. Either way the
pending row is already committed, and nothing is settled: what a crash, an OOM kill or a
deploy does to a real process. Reaching the end of the flow exits with ``SURVIVED``, so a
kill that never happened fails the parent's test instead of passing it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from datetime import datetime, timedelta
from typing import Any

SURVIVED = 3
"""The exit status when the flow finished without being killed (a broken test setup)."""


def _die() -> None:
    # SIGKILL: no exception, no finally, no atexit, no flush; the process simply stops.
    os.kill(os.getpid(), signal.SIGKILL)


async def _run(config: dict[str, Any]) -> None:
    from qzpay import create_billing
    from qzpay.adapters.clock import FrozenClock
    from qzpay.adapters.fake import FakeProvider
    from qzpay.contracts.provider import (
        ChargeRequest,
        ChargeResult,
        ProviderSubscription,
        ProviderSubscriptionRequest,
        RefundRequest,
        RefundResult,
    )
    from qzpay.contracts.storage import StoragePort

    kill_in = {"refund": "refund", "subscribe_managed": "subscription"}.get(
        config["flow"], "charge"
    )
    before = config["kill"] == "before"

    class Crashing(FakeProvider):
        """The real fake, and then the process dies before the answer gets back."""

        async def charge(self, request: ChargeRequest) -> ChargeResult:
            if kill_in == "charge" and before:
                _die()
            result = await super().charge(request)
            if kill_in == "charge":
                _die()
            return result

        async def create_subscription(
            self, request: ProviderSubscriptionRequest
        ) -> ProviderSubscription:
            if kill_in == "subscription" and before:
                _die()
            result = await super().create_subscription(request)
            if kill_in == "subscription":
                _die()
            return result

        async def refund(self, request: RefundRequest) -> RefundResult:
            if kill_in == "refund" and before:
                _die()
            result = await super().refund(request)
            if kill_in == "refund":
                _die()
            return result

    storage: StoragePort
    if config["storage"] == "sqlite":
        from qzpay.adapters.sqlite import SQLiteStorage

        storage = SQLiteStorage(config["path"])
    else:
        from qzpay.adapters.postgres import PostgresStorage

        storage = PostgresStorage(config["url"], table_prefix=config["prefix"], pool_size=2)
    provider = Crashing(ledger=config["ledger"], namespace="")
    clock = FrozenClock(datetime.fromisoformat(config["now"]))
    key = config.get("idempotency_key")
    lease = timedelta(milliseconds=config.get("lease_ms", 300_000))
    async with create_billing(
        storage=storage, provider=provider, clock=clock, job_lease=lease
    ) as billing:
        if config["flow"] == "renew":
            await billing.jobs.run_due()
        elif config["flow"] == "process":
            await billing.payments.process(
                customer_id=config["customer_id"],
                amount=config["amount"],
                currency="USD",
                idempotency_key=key,
            )
        elif config["flow"] in ("subscribe", "subscribe_managed"):
            await billing.subscriptions.create(
                customer_id=config["customer_id"],
                price_id=config["price_id"],
                idempotency_key=key,
                managed_by="provider" if config["flow"] == "subscribe_managed" else "qzpay",
            )
        else:
            await billing.payments.refund(
                config["payment_id"], amount=config["amount"], idempotency_key=key
            )


def main(argv: list[str]) -> int:
    import anyio

    anyio.run(_run, json.loads(argv[1]))
    return SURVIVED


if __name__ == "__main__":
    sys.exit(main(sys.argv))
