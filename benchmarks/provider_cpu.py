"""Where the client's CPU goes in one Stripe charge: the bare SDK, the adapter, qzpay's core.

    python benchmarks/provider_cpu.py [--rounds R] [--block B] [--repeats K]

A companion to ``providers.py`` (which times wall clock, the figure issue 16 sets its
target on), for deciding what to make cheaper. The same fake Stripe API is served in a
child process; this process's CPU time (``time.process_time``) is summed per case over
``rounds`` of ``block`` calls, the four cases taking turns each round, so drift of this VM
hits them alike (batches of hundreds moved ±30% between neighbours here; blocks of five
move a few percent, which is why ``providers.py`` pairs blocks too):

- ``sdk``: the bare ``StripeClient`` PaymentIntent create+confirm of ``providers.py``;
- ``adapter``: ``StripeProvider.charge`` with the ``ChargeRequest`` qzpay would build;
- ``qzpay``: ``billing.payments.process`` through ``StripeProvider`` (MemoryStorage);
- ``core``: the same ``payments.process`` with ``FakeProvider``: qzpay's own work alone.

Printed per repeat: CPU µs per call of each, and the adapter's and qzpay's CPU beyond the
bare SDK's as a percentage of it. Sequential only: at 32 tasks the client is CPU bound, so
these percentages are what ``providers.py`` measures there in wall clock.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the fakes live in tests/

import stripe

from benchmarks.providers import (
    AMOUNT,
    TIMEOUT,
    WARMUP,
    FakeServer,
    Op,
    _key,
    qzpay_case,
    stripe_sdk_case,
)
from qzpay.adapters.fake import FakeProvider
from qzpay.adapters.stripe import StripeProvider
from qzpay.contracts.provider import ChargeRequest
from tests.providers.stripe_api import API_KEY


@asynccontextmanager
async def adapter_case(provider: StripeProvider, url: str) -> AsyncIterator[Op]:
    """``StripeProvider.charge`` alone, for a customer with a card made through the SDK."""
    http = stripe.HTTPXClient(timeout=TIMEOUT)
    client = stripe.StripeClient(API_KEY, base_addresses={"api": url}, http_client=http)
    customer = await client.v1.customers.create_async({"email": "adapter@example.com"})
    card = await client.v1.payment_methods.attach_async("pm_card_visa", {"customer": customer.id})
    await http.close_async()  # type: ignore[no-untyped-call]

    async def op(i: int) -> object:
        return await provider.charge(
            ChargeRequest(
                amount=AMOUNT,
                currency="USD",
                provider_customer_id=customer.id,
                provider_payment_method_id=card.id,
                idempotency_key=_key(),
            )
        )

    yield op


async def measure(rounds: int, block: int, repeats: int) -> None:
    server = FakeServer("stripe")
    try:
        provider = StripeProvider(api_key=API_KEY, webhook_secret="whsec_cpu", api_base=server.url)
        cards = ["pm_card_visa"] * 32
        async with AsyncExitStack() as stack:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            cases: dict[str, Op] = {
                "sdk": await stack.enter_async_context(stripe_sdk_case(server.url)),
                "adapter": await stack.enter_async_context(adapter_case(provider, server.url)),
                "qzpay": await stack.enter_async_context(
                    qzpay_case(provider, "memory", directory, cards, "USD")
                ),
                "core": await stack.enter_async_context(
                    qzpay_case(FakeProvider(), "memory", directory, cards, "USD")
                ),
            }
            for i in range(WARMUP):
                for op in cases.values():
                    await op(i)
            print(
                f"python {platform.python_version()}, stripe {stripe.VERSION}; "
                f"{rounds} rounds of {block} calls per case; CPU µs per call"
            )
            for _ in range(repeats):
                spent = dict.fromkeys(cases, 0.0)
                for _ in range(rounds):
                    for name, op in cases.items():
                        started = time.process_time()
                        for i in range(block):
                            await op(i)
                        spent[name] += time.process_time() - started
                calls = rounds * block
                sdk = spent["sdk"]
                per_call = (f"{name} {spent[name] / calls * 1e6:,.0f}" for name in cases)
                print(
                    "  ".join(per_call),
                    f"| adapter {100 * (spent['adapter'] - sdk) / sdk:+.1f}%",
                    f"qzpay {100 * (spent['qzpay'] - sdk) / sdk:+.1f}%",
                )
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--block", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    asyncio.run(measure(args.rounds, args.block, args.repeats))


if __name__ == "__main__":
    main()
