"""PostgresStorage against a real server: schema lifecycle, the user story, isolation, concurrency."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import anyio
import asyncpg
import pytest

from qzpay import ConfigurationError, ConflictError, NotFoundError, ValidationError, create_billing
from qzpay.adapters.clock import FrozenClock
from qzpay.adapters.fake import FakeProvider
from qzpay.adapters.postgres import PostgresStorage
from qzpay.adapters.sql import migrations
from qzpay.adapters.sql.schema import due_index_name
from qzpay.cli import main
from qzpay.contracts.storage import Scope

pytestmark = pytest.mark.anyio

START = datetime(2028, 1, 31, 9, 0, tzinfo=UTC)


async def qzpay_cli(*argv: str) -> int:
    """The ``qzpay`` command runs its own event loop: give it a thread of its own."""
    return await anyio.to_thread.run_sync(main, list(argv))


async def test_opening_without_a_schema_says_to_run_qzpay_migrate(
    postgres_url: str, prefix: str
) -> None:
    storage = PostgresStorage(postgres_url, table_prefix=prefix)
    with pytest.raises(ConfigurationError, match="qzpay migrate --url") as raised:
        await storage.open()
    assert "missing" in raised.value.message
    connection = await asyncpg.connect(postgres_url)
    try:
        assert await connection.fetchval("SELECT to_regclass($1)", f"{prefix}customers") is None
    finally:
        await connection.close()


async def test_migrate_is_idempotent_and_records_every_version(
    postgres_url: str, prefix: str
) -> None:
    storage = PostgresStorage(postgres_url, table_prefix=prefix, auto_migrate=True)
    await storage.open()
    try:
        assert await storage.schema_version() == migrations.LATEST_VERSION
        assert await storage.migrate() == []
    finally:
        await storage.close()
    again = PostgresStorage(postgres_url, table_prefix=prefix)  # no auto_migrate needed now
    await again.open()
    await again.close()


async def test_an_older_schema_is_refused_then_upgraded(postgres_url: str, prefix: str) -> None:
    # A database as version 1 left it: its frozen DDL, stamped version 1.
    connection = await asyncpg.connect(postgres_url)
    try:
        layout = migrations.Layout(prefix, False, "postgresql")
        for statement in migrations.MIGRATIONS[0].statements(layout):
            await connection.execute(statement)
        await connection.execute(
            f"INSERT INTO {prefix}migrations (version, name, applied_at) "
            "VALUES (1, 'initial schema', now())"
        )
    finally:
        await connection.close()

    with pytest.raises(ConfigurationError, match="at version 1"):
        await PostgresStorage(postgres_url, table_prefix=prefix).open()

    upgraded = PostgresStorage(postgres_url, table_prefix=prefix, auto_migrate=True)
    await upgraded.open()
    try:
        assert await upgraded.schema_version() == migrations.LATEST_VERSION
    finally:
        await upgraded.close()
    connection = await asyncpg.connect(postgres_url)
    try:
        assert await connection.fetchval("SELECT to_regclass($1)", due_index_name(prefix))
        assert await connection.fetchval("SELECT tenancy FROM " + prefix + "schema_info") == (
            "single"
        )
    finally:
        await connection.close()


async def test_concurrent_migrators_create_the_schema_once(postgres_url: str, prefix: str) -> None:
    stores = [PostgresStorage(postgres_url, table_prefix=prefix) for _ in range(4)]
    applied: list[list[int]] = []

    async def migrate(store: PostgresStorage) -> None:
        # open() refuses without auto_migrate, so connect the pool through it first.
        store._auto_migrate = True
        await store.open()
        applied.append(await store.migrate())
        await store.close()

    async with anyio.create_task_group() as group:
        for store in stores:
            group.start_soon(migrate, store)
    assert all(versions == [] for versions in applied)  # open() did the work, once


async def test_qzpay_migrate_on_a_plain_postgres_url(
    postgres_url: str, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = postgres_url.replace("postgresql://", "postgres://", 1)
    latest = migrations.LATEST_VERSION
    where = f"{url} (prefix {prefix}, single-tenant)"
    assert await qzpay_cli("migrate", "--url", url, "--prefix", prefix) == 0
    assert capsys.readouterr().out == f"Created the qzpay schema, version {latest}, in {where}\n"
    assert await qzpay_cli("migrate", "--url", url, "--prefix", prefix) == 0
    assert capsys.readouterr().out == (
        f"The qzpay schema in {where} is up to date (version {latest}): nothing to do\n"
    )
    storage = PostgresStorage(postgres_url, table_prefix=prefix)
    await storage.open()
    try:
        assert await storage.schema_version() == migrations.LATEST_VERSION
    finally:
        await storage.close()


async def _version_1(url: str, prefix: str, *, multi_tenant: bool = False) -> None:
    """A database as version 1 left it: its frozen DDL, stamped version 1."""
    connection = await asyncpg.connect(url)
    try:
        layout = migrations.Layout(prefix, multi_tenant, "postgresql")
        for statement in migrations.MIGRATIONS[0].statements(layout):
            await connection.execute(statement)
        await connection.execute(
            f"INSERT INTO {prefix}migrations (version, name, applied_at) "
            "VALUES (1, 'initial schema', now())"
        )
    finally:
        await connection.close()


async def test_qzpay_migrate_says_it_upgraded_from_version_1(
    postgres_url: str, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await _version_1(postgres_url, prefix)
    assert await qzpay_cli("migrate", "--url", postgres_url, "--prefix", prefix) == 0
    assert capsys.readouterr().out == (
        f"Upgraded the qzpay schema in {postgres_url} (prefix {prefix}, single-tenant) "
        f"from version 1 to {migrations.LATEST_VERSION}\n"
    )


async def test_qzpay_migrate_refuses_to_change_tenancy(
    postgres_url: str, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await qzpay_cli("migrate", "--url", postgres_url, "--prefix", prefix) == 0
    capsys.readouterr()
    argv = ("migrate", "--url", postgres_url, "--prefix", prefix, "--multi-tenant")
    assert await qzpay_cli(*argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"under prefix '{prefix}' in database " in captured.err
    assert f"is single-tenant (version {migrations.LATEST_VERSION})" in captured.err
    assert "drop --multi-tenant" in captured.err


@pytest.mark.parametrize("auto_migrate", [False, True])
@pytest.mark.parametrize("there", [False, True], ids=["single_there", "multi_there"])
async def test_opening_a_schema_of_the_other_tenancy_is_refused_at_once(
    postgres_url: str, prefix: str, there: bool, auto_migrate: bool
) -> None:
    assert await PostgresStorage(postgres_url, table_prefix=prefix, multi_tenant=there).migrate()
    storage = PostgresStorage(
        postgres_url, table_prefix=prefix, multi_tenant=not there, auto_migrate=auto_migrate
    )
    with pytest.raises(ConfigurationError) as raised:
        await storage.open()
    kind = "multi" if there else "single"
    server = urlsplit(postgres_url)
    where = f"database {server.path.lstrip('/')} at {server.hostname}:{server.port or 5432}"
    assert str(raised.value) == (
        f"the qzpay schema under prefix {prefix!r} in {where} is {kind}-tenant "
        f"(version {migrations.LATEST_VERSION}), but this store was asked for "
        f"multi_tenant={not there}: open it with multi_tenant={there}, or use another prefix"
    )
    assert storage.opened == 0
    with pytest.raises(ConfigurationError, match="not open"):
        await storage.schema_version()


async def test_an_older_schema_of_the_other_tenancy_is_refused_and_not_upgraded(
    postgres_url: str, prefix: str
) -> None:
    await _version_1(postgres_url, prefix, multi_tenant=True)
    storage = PostgresStorage(postgres_url, table_prefix=prefix, auto_migrate=True)
    with pytest.raises(ConfigurationError, match=r"is multi-tenant \(version 1\)"):
        await storage.open()
    with pytest.raises(ConfigurationError, match=r"is multi-tenant \(version 1\)"):
        await storage.migrate()
    connection = await asyncpg.connect(postgres_url)
    try:
        assert await connection.fetchval(f"SELECT max(version) FROM {prefix}migrations") == 1
    finally:
        await connection.close()


async def test_user_story_from_a_plain_url(postgres_url: str, prefix: str) -> None:
    """Migrate, open, create a customer, a plan, a price and a trialing subscription."""
    assert await qzpay_cli("migrate", "--url", postgres_url, "--prefix", prefix) == 0
    clock = FrozenClock(START)
    storage = PostgresStorage(
        postgres_url.replace("postgresql://", "postgresql+asyncpg://"), table_prefix=prefix
    )
    async with create_billing(storage=storage, provider=FakeProvider(), clock=clock) as billing:
        ann = await billing.customers.create(email="ann@example.com", external_id="u_1")
        plan = await billing.plans.create(name="Pro", entitlements=["reports"], limits={"seats": 5})
        price = await billing.prices.create(
            plan_id=plan.id, unit_amount=2900, currency="usd", interval="month"
        )
        await billing.payment_methods.attach(ann.id, token="pm_card_visa")
        sub = await billing.subscriptions.create(
            customer_id=ann.id, price_id=price.id, trial_days=14
        )
        assert sub.status == "trialing"
        assert sub.trial_end == START + timedelta(days=14)
        assert await billing.subscriptions.get(sub.id) == sub
        assert (await billing.customers.get_by_external_id("u_1")).id == ann.id

        clock.advance(timedelta(days=15))
        report = await billing.jobs.run_due()
        assert (report.trials_ended, report.charged) == (1, 1)
        renewed = await billing.subscriptions.get(sub.id)
        assert renewed.status == "active"
        assert renewed.current_period_end == datetime(2028, 3, 14, 9, 0, tzinfo=UTC)


async def test_two_prefixes_and_two_tenants_share_one_database(
    postgres_url: str, prefix: str
) -> None:
    one = PostgresStorage(postgres_url, table_prefix=prefix, multi_tenant=True, auto_migrate=True)
    two = PostgresStorage(postgres_url, table_prefix=prefix + "b_", auto_migrate=True)
    provider = FakeProvider()
    async with (
        create_billing(storage=one, provider=provider, tenancy="multi") as multi,
        create_billing(storage=two, provider=provider) as single,
    ):
        acme, globex = multi.for_tenant("acme"), multi.for_tenant("globex")
        a = await acme.customers.create(email="a@acme.test", external_id="u_1")
        g = await globex.customers.create(email="g@globex.test", external_id="u_1")
        s = await single.customers.create(email="s@single.test", external_id="u_1")

        assert [c.id for c in (await acme.customers.list()).items] == [a.id]
        assert [c.id for c in (await globex.customers.list()).items] == [g.id]
        assert [c.id for c in (await single.customers.list()).items] == [s.id]
        with pytest.raises(NotFoundError):
            await acme.customers.get(g.id)
        with pytest.raises(NotFoundError):
            await globex.customers.update(a.id, name="stolen")
        with pytest.raises(NotFoundError):
            await globex.customers.delete(a.id)
        assert (await acme.customers.get(a.id)).name is None
        with pytest.raises(ConfigurationError):
            await multi.customers.list()


async def test_livemode_walls_on_postgres(postgres_url: str, prefix: str) -> None:
    storage = PostgresStorage(postgres_url, table_prefix=prefix, auto_migrate=True)
    provider = FakeProvider()
    test_side = create_billing(storage=storage, provider=provider, livemode=False)
    live_side = create_billing(storage=storage, provider=provider, livemode=True)
    async with test_side:
        t = await test_side.customers.create(email="t@example.com", external_id="u_1")
        live = await live_side.customers.create(email="l@example.com", external_id="u_1")
        assert [c.id for c in (await test_side.customers.list()).items] == [t.id]
        with pytest.raises(NotFoundError):
            await test_side.customers.get(live.id)


async def test_concurrent_creates_of_one_external_id_across_connections(
    postgres_url: str, prefix: str
) -> None:
    storage = PostgresStorage(postgres_url, table_prefix=prefix, auto_migrate=True, pool_size=10)
    async with create_billing(storage=storage, provider=FakeProvider()) as billing:
        errors: list[ConflictError] = []

        async def create() -> None:
            try:
                await billing.customers.create(email="dup@example.com", external_id="dup")
            except ConflictError as error:
                errors.append(error)

        async with anyio.create_task_group() as group:
            for _ in range(20):
                group.start_soon(create)
        assert len(errors) == 19
        assert {error.field for error in errors} == {"external_id"}
        assert len((await billing.customers.list()).items) == 1


async def test_200_concurrent_invoice_numbers_are_exactly_1_to_200(
    postgres_url: str, prefix: str
) -> None:
    storage = PostgresStorage(postgres_url, table_prefix=prefix, auto_migrate=True, pool_size=10)
    await storage.open()
    try:
        numbers: list[int] = []
        scope = Scope(livemode=False)

        async def allocate() -> None:
            async with storage.transaction(scope) as tx:
                numbers.append(await tx.next_number("invoice"))

        async with anyio.create_task_group() as group:
            for _ in range(200):
                group.start_soon(allocate)
        assert sorted(numbers) == list(range(1, 201))

        async def allocate_then_fail() -> None:
            async with storage.transaction(scope) as tx:
                assert await tx.next_number("invoice") == 201
                raise RuntimeError("rolled back: the number is given out again")

        with pytest.raises(RuntimeError):
            await allocate_then_fail()
        async with storage.transaction(scope) as tx:
            assert await tx.next_number("invoice") == 201
    finally:
        await storage.close()


async def test_database_refuses_what_the_port_would_not_write(
    postgres_url: str, prefix: str
) -> None:
    storage = PostgresStorage(postgres_url, table_prefix=prefix, auto_migrate=True)
    async with create_billing(storage=storage, provider=FakeProvider()) as billing:
        await billing.customers.create(email="ann@example.com")
    connection = await asyncpg.connect(postgres_url)
    try:
        with pytest.raises(asyncpg.exceptions.RestrictViolationError):
            await connection.execute(f"UPDATE {prefix}audit_logs SET action = 'forged'")
        with pytest.raises(asyncpg.exceptions.RestrictViolationError):
            await connection.execute(f"DELETE FROM {prefix}audit_logs")
        with pytest.raises(asyncpg.exceptions.CheckViolationError):
            await connection.execute(f"UPDATE {prefix}customers SET version = 0")
    finally:
        await connection.close()


def test_dsn_forms_and_hostile_prefix_are_checked_before_any_connection() -> None:
    for dsn in ("mysql://x", "sqlite:///x.db", ""):
        with pytest.raises(ValidationError) as raised:
            PostgresStorage(dsn)
        assert raised.value.field == "dsn"
    with pytest.raises(ValidationError) as raised:
        PostgresStorage("postgresql://localhost/x", table_prefix="x; drop table")
    assert raised.value.field == "table_prefix"
