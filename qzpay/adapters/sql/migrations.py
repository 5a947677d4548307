"""Versioned schema changes, recorded in a ``{prefix}migrations`` table.

qzpay keeps a small ordered list of DDL steps instead of Alembic (see
docs/decisions/0003-migrations.md): the schema is built per prefix and tenancy mode at run
time, which Alembic's file-per-revision model does not fit, and an embedded SQLite user
should get a working schema on first open with no tool to run.

A database with no migrations table gets the current schema in one go, from the SQLAlchemy
metadata the registry builds, and is stamped with every version. An older one gets the steps
after its version, in order, in one transaction. Those steps are frozen text: a step is what
that version of qzpay ran, and must never follow the registry, or a field added to a domain
class later would reach new databases only while old ones were stamped current without it.
``tests/storage/test_migrations.py`` compares a new schema with one upgraded from version 1,
so a field added without a step here fails the tests.

Frozen text names objects as ``{prefix}remainder``; ``render`` turns each into the prefixed
identifier, shortened exactly as ``schema.constraint_name`` shortens it, so a long prefix
gets the same hashed names on both paths.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence

import attrs
from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.schema import CreateIndex, CreateTable
from sqlalchemy.sql import ClauseElement

from qzpay.adapters.sql import schema_v1
from qzpay.adapters.sql.schema import Schema, append_only_tables, constraint_name
from qzpay.errors import ConfigurationError
from qzpay.money import CURRENCIES

_MAX_IDENTIFIER = 63
_PLACEHOLDER = re.compile(r"\{prefix\}([a-z0-9_]+)")


def identifier(prefix: str, remainder: str) -> str:
    """``prefix + remainder``, shortened with a hash where PostgreSQL would truncate it.

    A copy of ``schema.constraint_name``'s rule, kept here on purpose: the names existing
    databases hold must not change if that function ever does.
    """
    name = prefix + remainder
    if len(name) <= _MAX_IDENTIFIER:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{name[: _MAX_IDENTIFIER - 9]}_{digest}"


def render(template: str, prefix: str) -> str:
    """Frozen DDL with every ``{prefix}name`` made the identifier it is under ``prefix``."""
    return _PLACEHOLDER.sub(lambda match: identifier(prefix, match.group(1)), template)


@attrs.frozen
class Layout:
    """What a frozen step may depend on: never the registry, only these three."""

    prefix: str
    multi_tenant: bool
    dialect: str  # "sqlite" or "postgresql"

    @classmethod
    def of(cls, schema: Schema, dialect: Dialect) -> Layout:
        return cls(schema.prefix, schema.multi_tenant, dialect.name)

    @property
    def tenancy(self) -> str:
        return "multi" if self.multi_tenant else "single"

    @property
    def scope(self) -> str:
        return "livemode, tenant_id" if self.multi_tenant else "livemode"

    @property
    def true(self) -> str:
        return "1" if self.dialect == "sqlite" else "true"

    @property
    def false(self) -> str:
        return "0" if self.dialect == "sqlite" else "false"

    def render(self, *templates: str) -> list[str]:
        return [render(template, self.prefix) for template in templates]


@attrs.frozen
class Migration:
    version: int
    name: str
    statements: Callable[[Layout], Sequence[str]]


# -- the steps: frozen text, each what its version ran -----------------------------------


def _v1_initial(layout: Layout) -> list[str]:
    return layout.render(*schema_v1.STATEMENTS[(layout.dialect, layout.multi_tenant)])


def _v2_due_index(layout: Layout) -> list[str]:
    return layout.render(
        "CREATE INDEX IF NOT EXISTS {prefix}subscriptions_due_at_idx "
        f"ON {{prefix}}subscriptions ({layout.scope}, due_at)"
    )


def _v3_sequences_and_one_default(layout: Layout) -> list[str]:
    """Counters by name (invoice numbers become ``name='invoice'``); one default method.

    Where a customer already has several default payment methods (the race the index now
    prevents), the newest stays the default and the others are unset, so the index can be
    built on the data as it is.
    """
    tenant = "tenant_id, " if layout.multi_tenant else ""
    tenant_column = "    tenant_id TEXT NOT NULL,\n" if layout.multi_tenant else ""
    same_tenant = " AND newer.tenant_id = {prefix}payment_methods.tenant_id" * layout.multi_tenant
    return layout.render(
        "CREATE TABLE IF NOT EXISTS {prefix}sequences (\n"
        f"{tenant_column}"
        "    livemode BOOLEAN NOT NULL,\n"
        "    name TEXT NOT NULL,\n"
        "    last_number BIGINT NOT NULL,\n"
        f"    CONSTRAINT {{prefix}}sequences_pk PRIMARY KEY ({layout.scope}, name)\n"
        ")",
        f"INSERT INTO {{prefix}}sequences ({tenant}livemode, name, last_number) "
        f"SELECT {tenant}livemode, 'invoice', last_number FROM {{prefix}}invoice_sequences",
        "DROP TABLE {prefix}invoice_sequences",
        f"UPDATE {{prefix}}payment_methods SET is_default = {layout.false} "
        f"WHERE deleted_at IS NULL AND is_default = {layout.true} AND id <> ("
        "SELECT newer.id FROM {prefix}payment_methods AS newer "
        "WHERE newer.livemode = {prefix}payment_methods.livemode"
        f"{same_tenant} "
        "AND newer.customer_id = {prefix}payment_methods.customer_id "
        f"AND newer.deleted_at IS NULL AND newer.is_default = {layout.true} "
        "ORDER BY newer.created_at DESC, newer.id DESC LIMIT 1)",
        "CREATE UNIQUE INDEX IF NOT EXISTS {prefix}payment_methods_customer_id_is_default_key "
        f"ON {{prefix}}payment_methods ({layout.scope}, customer_id) "
        f"WHERE deleted_at IS NULL AND is_default = {layout.true}",
    )


def _v4_schema_info(layout: Layout) -> list[str]:
    """Record the prefix and tenancy, so opening with the other tenancy is refused at once.

    The upgrade runs only after the caller checked that the tenancy it asked for is the one
    the tables have (``check``), so ``layout.tenancy`` is the schema's own.
    """
    return [
        *layout.render(
            "CREATE TABLE IF NOT EXISTS {prefix}schema_info (\n"
            "    prefix TEXT NOT NULL,\n"
            "    tenancy TEXT NOT NULL,\n"
            "    PRIMARY KEY (prefix),\n"
            "    CONSTRAINT {prefix}schema_info_tenancy_ck "
            "CHECK (tenancy IN ('single', 'multi'))\n"
            ")"
        ),
        _identity_row(layout),
    ]


def _v5_payments_intent_first(layout: Layout) -> list[str]:
    """What intent-first payments, refunds, promo codes and idempotency need.

    Payments: the provider's own failure code, a description, the next action of a
    ``requires_action`` payment, and ``due_at`` with a lease, so the job runner claims
    pending payments to reconcile them. One payment per ``(provider, provider_id)`` (a
    payment recorded twice is stored once) and one pending attempt per invoice; refunds
    likewise once per provider id. Promo codes: duration, minimum amount, first-time-only.
    Idempotency keys are scoped per operation as well.
    """
    sqlite = layout.dialect == "sqlite"
    json = "JSON" if sqlite else "JSONB"
    moment = "DATETIME" if sqlite else "TIMESTAMP WITH TIME ZONE"
    scope = layout.scope
    return layout.render(
        "ALTER TABLE {prefix}payments ADD COLUMN provider_failure_code TEXT",
        "ALTER TABLE {prefix}payments ADD COLUMN description TEXT",
        f"ALTER TABLE {{prefix}}payments ADD COLUMN next_action {json}",
        f"ALTER TABLE {{prefix}}payments ADD COLUMN due_at {moment}",
        "ALTER TABLE {prefix}payments ADD COLUMN claimed_by TEXT",
        f"ALTER TABLE {{prefix}}payments ADD COLUMN claimed_until {moment}",
        "CREATE INDEX IF NOT EXISTS {prefix}payments_due_at_idx "
        f"ON {{prefix}}payments ({scope}, due_at)",
        "CREATE UNIQUE INDEX IF NOT EXISTS {prefix}payments_provider_provider_id_key "
        f"ON {{prefix}}payments ({scope}, provider, provider_id) WHERE deleted_at IS NULL",
        "CREATE UNIQUE INDEX IF NOT EXISTS {prefix}payments_invoice_id_status_key "
        f"ON {{prefix}}payments ({scope}, invoice_id) "
        "WHERE deleted_at IS NULL AND status = 'pending'",
        "ALTER TABLE {prefix}refunds ADD COLUMN failure_code TEXT",
        "ALTER TABLE {prefix}refunds ADD COLUMN idempotency_key TEXT",
        "CREATE UNIQUE INDEX IF NOT EXISTS {prefix}refunds_provider_provider_id_key "
        f"ON {{prefix}}refunds ({scope}, provider, provider_id)",
        "ALTER TABLE {prefix}promo_codes ADD COLUMN duration TEXT DEFAULT 'once' NOT NULL",
        "ALTER TABLE {prefix}promo_codes ADD COLUMN duration_in_periods BIGINT",
        "ALTER TABLE {prefix}promo_codes ADD COLUMN minimum_amount BIGINT",
        "ALTER TABLE {prefix}promo_codes ADD COLUMN first_time_only BOOLEAN "
        f"DEFAULT {layout.false} NOT NULL",
        "DROP INDEX IF EXISTS {prefix}idempotency_keys_key_key",
        "CREATE UNIQUE INDEX IF NOT EXISTS {prefix}idempotency_keys_operation_key_key "
        f'ON {{prefix}}idempotency_keys ({scope}, operation, "key")',
    )


def _v6_lifecycle(layout: Layout) -> list[str]:
    """What the lifecycle needs: pauses that resume by themselves, dunning counted from the
    failed renewal, the trial-will-end reminder sent once; invoices' tax rate, payment
    attempts and finalization time; invoice lines that may be credits (a negative unit
    amount and amount: a proration's unused time), so their two checks go (SQLite cannot
    drop a check: the table is rebuilt with the same columns, keys and index)."""
    sqlite = layout.dialect == "sqlite"
    moment = "DATETIME" if sqlite else "TIMESTAMP WITH TIME ZONE"
    rate = "TEXT" if sqlite else "NUMERIC"
    return [
        *_v6_columns(layout, moment, rate),
        *_v6_signed_invoices(layout),
        *_v6_signed_lines(layout),
    ]


_V6_SIGNED_INVOICE_CHECKS = (
    ("subtotal", "{prefix}invoices_subtotal_ck"),
    ("tax", "{prefix}invoices_tax_ck"),
    ("total", "{prefix}invoices_total_ck"),
)


def _v6_signed_invoices(layout: Layout) -> list[str]:
    """A draft's subtotal, tax and total may be negative (credits before the period's line).

    SQLite cannot drop a check, and rebuilding ``invoices`` would break the foreign keys
    that point at it inside the migration's transaction; SQLite documents removing a CHECK
    by editing the stored table text (``writable_schema``) as safe, so each check's text is
    cut from it (both spellings: the version 1 text and SQLAlchemy's). The invoice lines'
    rebuild that follows changes the schema, which moves the schema cookie, so every other
    connection reloads it.
    """
    if layout.dialect != "sqlite":
        return layout.render(
            *(
                f"ALTER TABLE {{prefix}}invoices DROP CONSTRAINT {name}"
                for _, name in _V6_SIGNED_INVOICE_CHECKS
            )
        )
    cut = "sql"
    for column, name in _V6_SIGNED_INVOICE_CHECKS:
        cut = f"replace({cut}, 'CONSTRAINT {name} CHECK ({column} >= 0),', '')"
    return [
        "PRAGMA writable_schema = ON",
        *layout.render(
            f"UPDATE sqlite_master SET sql = {cut} "
            "WHERE type = 'table' AND name = '{prefix}invoices'"
        ),
        "PRAGMA writable_schema = RESET",
    ]


def _v6_signed_lines(layout: Layout) -> list[str]:
    if layout.dialect != "sqlite":
        return layout.render(
            "ALTER TABLE {prefix}invoice_lines DROP CONSTRAINT {prefix}invoice_lines_unit_amount_ck",
            "ALTER TABLE {prefix}invoice_lines DROP CONSTRAINT {prefix}invoice_lines_amount_ck",
        )
    tenant = "\ttenant_id TEXT NOT NULL, \n" if layout.multi_tenant else ""
    columns = (
        "id, livemode, tenant_id, invoice_id, description, quantity, unit_amount, amount, "
        "currency, price_id, period_start, period_end, proration, metadata, created_at"
        if layout.multi_tenant
        else "id, livemode, invoice_id, description, quantity, unit_amount, amount, "
        "currency, price_id, period_start, period_end, proration, metadata, created_at"
    )
    return layout.render(
        "CREATE TABLE {prefix}invoice_lines_v6 (\n"
        "\tid CHAR(32) NOT NULL, \n"
        "\tlivemode BOOLEAN NOT NULL, \n"
        f"{tenant}"
        "\tinvoice_id CHAR(32) NOT NULL, \n"
        "\tdescription TEXT NOT NULL, \n"
        "\tquantity BIGINT NOT NULL, \n"
        "\tunit_amount BIGINT NOT NULL, \n"
        "\tamount BIGINT NOT NULL, \n"
        "\tcurrency TEXT NOT NULL, \n"
        "\tprice_id CHAR(32), \n"
        "\tperiod_start DATETIME, \n"
        "\tperiod_end DATETIME, \n"
        "\tproration BOOLEAN NOT NULL, \n"
        "\tmetadata JSON NOT NULL, \n"
        "\tcreated_at DATETIME NOT NULL, \n"
        "\tPRIMARY KEY (id), \n"
        "\tCONSTRAINT {prefix}invoice_lines_quantity_ck CHECK (quantity >= 0), \n"
        "\tCONSTRAINT {prefix}invoice_lines_invoice_id_fk FOREIGN KEY(invoice_id, "
        f"{layout.scope}) REFERENCES {{prefix}}invoices (id, {layout.scope})\n"
        ")",
        f"INSERT INTO {{prefix}}invoice_lines_v6 ({columns}) "
        f"SELECT {columns} FROM {{prefix}}invoice_lines",
        "DROP TABLE {prefix}invoice_lines",
        "ALTER TABLE {prefix}invoice_lines_v6 RENAME TO {prefix}invoice_lines",
        "CREATE INDEX IF NOT EXISTS {prefix}invoice_lines_invoice_id_idx "
        f"ON {{prefix}}invoice_lines ({layout.scope}, invoice_id)",
    )


def _v6_columns(layout: Layout, moment: str, rate: str) -> list[str]:
    return layout.render(
        f"ALTER TABLE {{prefix}}subscriptions ADD COLUMN resumes_at {moment}",
        f"ALTER TABLE {{prefix}}subscriptions ADD COLUMN past_due_at {moment}",
        "ALTER TABLE {prefix}subscriptions ADD COLUMN dunning_attempts BIGINT DEFAULT 0 NOT NULL",
        f"ALTER TABLE {{prefix}}subscriptions ADD COLUMN trial_reminded_at {moment}",
        f"ALTER TABLE {{prefix}}invoices ADD COLUMN tax_rate {rate}",
        "ALTER TABLE {prefix}invoices ADD COLUMN attempt_count BIGINT DEFAULT 0 NOT NULL",
        f"ALTER TABLE {{prefix}}invoices ADD COLUMN finalized_at {moment}",
    )


def _v7_webhook_processing(layout: Layout) -> list[str]:
    """Where applying each stored webhook stands: ``webhook_events`` rows never change, so
    the status, the error and the job runner's retries (``due_at`` with a lease) are kept
    in a row of their own, one per event."""
    sqlite = layout.dialect == "sqlite"
    uuid = "CHAR(32)" if sqlite else "UUID"
    moment = "DATETIME" if sqlite else "TIMESTAMP WITH TIME ZONE"
    tenant = "\ttenant_id TEXT NOT NULL, \n" if layout.multi_tenant else ""
    scope = layout.scope
    return layout.render(
        "CREATE TABLE IF NOT EXISTS {prefix}webhook_processing (\n"
        f"\tid {uuid} NOT NULL, \n"
        "\tlivemode BOOLEAN NOT NULL, \n"
        f"{tenant}"
        f"\twebhook_event_id {uuid} NOT NULL, \n"
        "\tprovider TEXT NOT NULL, \n"
        "\tprovider_event_id TEXT NOT NULL, \n"
        "\ttype TEXT NOT NULL, \n"
        "\tstatus TEXT NOT NULL, \n"
        "\tattempts BIGINT NOT NULL, \n"
        "\terror TEXT, \n"
        f"\tprocessed_at {moment}, \n"
        f"\tdue_at {moment}, \n"
        "\tclaimed_by TEXT, \n"
        f"\tclaimed_until {moment}, \n"
        "\tversion BIGINT NOT NULL, \n"
        f"\tcreated_at {moment} NOT NULL, \n"
        f"\tupdated_at {moment} NOT NULL, \n"
        "\tPRIMARY KEY (id), \n"
        "\tCONSTRAINT {prefix}webhook_processing_version_ck CHECK (version >= 1)\n"
        ")",
        "CREATE INDEX IF NOT EXISTS {prefix}webhook_processing_due_at_idx "
        f"ON {{prefix}}webhook_processing ({scope}, due_at)",
        "CREATE UNIQUE INDEX IF NOT EXISTS {prefix}webhook_processing_webhook_event_id_key "
        f"ON {{prefix}}webhook_processing ({scope}, webhook_event_id)",
    )


def _v8_provider_managed(layout: Layout) -> list[str]:
    """Provider-managed subscriptions: the provider and its id on the subscription (one
    subscription per provider id, so a webhook finds the one it is about) and on the price
    it is sold at (the provider's price the provider bills); where the customer goes to
    authorize one that waits for them."""
    json = "JSON" if layout.dialect == "sqlite" else "JSONB"
    return layout.render(
        "ALTER TABLE {prefix}subscriptions ADD COLUMN provider TEXT",
        "ALTER TABLE {prefix}subscriptions ADD COLUMN provider_id TEXT",
        f"ALTER TABLE {{prefix}}subscriptions ADD COLUMN next_action {json}",
        "CREATE UNIQUE INDEX IF NOT EXISTS {prefix}subscriptions_provider_provider_id_key "
        f"ON {{prefix}}subscriptions ({layout.scope}, provider, provider_id) "
        "WHERE deleted_at IS NULL",
        "ALTER TABLE {prefix}prices ADD COLUMN provider TEXT",
        "ALTER TABLE {prefix}prices ADD COLUMN provider_id TEXT",
    )


def _identity_row(layout: Layout) -> str:
    # The prefix was validated as [a-z_][a-z0-9_]* before any SQL: safe as a literal.
    table = identifier(layout.prefix, "schema_info")
    return f"INSERT INTO {table} (prefix, tenancy) VALUES ('{layout.prefix}', '{layout.tenancy}')"


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial schema", _v1_initial),
    Migration(2, "index subscriptions by due_at for job claims", _v2_due_index),
    Migration(
        3, "named sequences; one default payment method per customer", _v3_sequences_and_one_default
    ),
    Migration(4, "record the prefix and tenancy in schema_info", _v4_schema_info),
    Migration(
        5,
        "intent-first payments, refunds, promo code rules, idempotency keys per operation",
        _v5_payments_intent_first,
    ),
    Migration(
        6, "subscription lifecycle and dunning; invoice tax rate and attempts", _v6_lifecycle
    ),
    Migration(7, "webhook processing status and retries", _v7_webhook_processing),
    Migration(8, "provider-managed subscriptions and prices", _v8_provider_managed),
)
LATEST_VERSION = MIGRATIONS[-1].version


# -- a new database: the current schema, from the metadata -------------------------------


def _append_only_triggers(schema: Schema, dialect: Dialect) -> list[str]:
    """Audit logs and webhook events refuse UPDATE and DELETE in the database itself."""
    tables: list[Table] = append_only_tables(schema)
    if dialect.name == "sqlite":
        return [
            f"CREATE TRIGGER IF NOT EXISTS "
            f"{constraint_name(schema.prefix, table.name[len(schema.prefix) :], op + '_refused')} "
            f"BEFORE {op.upper()} ON {table.name} "
            f"BEGIN SELECT RAISE(ABORT, '{table.name} is append-only'); END"
            for table in tables
            for op in ("update", "delete")
        ]
    function = f"{schema.prefix}refuse_change"
    statements = [
        f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$ "
        f"BEGIN RAISE EXCEPTION '% is append-only', TG_TABLE_NAME "
        f"USING ERRCODE = 'restrict_violation'; END $$"
    ]
    statements += [
        f"CREATE OR REPLACE TRIGGER "
        f"{constraint_name(schema.prefix, table.name[len(schema.prefix) :], 'change_refused')} "
        f"BEFORE UPDATE OR DELETE ON {table.name} FOR EACH ROW EXECUTE FUNCTION {function}()"
        for table in tables
    ]
    return statements


def _seed_currencies(schema: Schema, dialect: Dialect) -> list[str]:
    rows = [{"code": c.code, "exponent": c.exponent, "name": c.name} for c in CURRENCIES.values()]
    statement: ClauseElement = (
        sqlite.insert(schema.currencies).values(rows).on_conflict_do_nothing()
        if dialect.name == "sqlite"
        else postgresql.insert(schema.currencies).values(rows).on_conflict_do_nothing()
    )
    return [str(statement.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))]


def create_statements(schema: Schema, dialect: Dialect) -> list[str]:
    """All DDL of the current schema, for a database that has none under this prefix."""
    statements: list[str] = []
    for table in schema.metadata.sorted_tables:
        statements.append(str(CreateTable(table, if_not_exists=True).compile(dialect=dialect)))
        statements.extend(
            str(CreateIndex(index, if_not_exists=True).compile(dialect=dialect))
            for index in sorted(table.indexes, key=lambda index: str(index.name))
        )
    statements += _append_only_triggers(schema, dialect)
    statements += _seed_currencies(schema, dialect)
    statements.append(_identity_row(Layout.of(schema, dialect)))
    return statements


# -- what is there, and what to do about it ----------------------------------------------


@attrs.frozen
class Found:
    """What a database holds under a prefix, read before anything is changed.

    ``multi_tenant`` is what ``schema_info`` records or, before version 4, whether
    ``{prefix}customers`` has a ``tenant_id`` column; ``None`` when there is no schema.
    """

    version: int | None
    multi_tenant: bool | None = None
    recorded_prefix: str | None = None


def check(found: Found, schema: Schema, where: str) -> None:
    """Refuse a schema this store cannot use, saying what is there and what was asked.

    Without this, a tenancy mismatch surfaces at the first write as a NOT NULL violation or
    an unknown column; and no migration ever changes tenancy.
    """
    if found.version is None:
        return
    prefix = schema.prefix
    if found.version > LATEST_VERSION:
        raise ConfigurationError(
            f"the qzpay schema under prefix {prefix!r} in {where} is at version "
            f"{found.version}, newer than this qzpay knows ({LATEST_VERSION}): upgrade qzpay",
            rule="schema_version",
        )
    if found.recorded_prefix is not None and found.recorded_prefix != prefix:
        raise ConfigurationError(
            f"the tables under prefix {prefix!r} in {where} belong to a qzpay schema made for "
            f"prefix {found.recorded_prefix!r}: use that prefix",
            rule="prefix",
        )
    if found.multi_tenant is not None and found.multi_tenant != schema.multi_tenant:
        there = "multi" if found.multi_tenant else "single"
        raise ConfigurationError(
            f"the qzpay schema under prefix {prefix!r} in {where} is {there}-tenant "
            f"(version {found.version}), but this store was asked for "
            f"multi_tenant={schema.multi_tenant}: open it with "
            f"multi_tenant={found.multi_tenant}, or use another prefix",
            rule="tenancy",
        )


def plan(found: Found, schema: Schema, dialect: Dialect) -> tuple[list[Migration], list[str]]:
    """The steps to record and the statements to run for a database in state ``found``.

    ``check`` must have passed: the steps are rendered for the schema's tenancy.
    """
    if found.version is None:
        return list(MIGRATIONS), create_statements(schema, dialect)
    steps = [step for step in MIGRATIONS if step.version > found.version]
    layout = Layout.of(schema, dialect)
    return steps, [statement for step in steps for statement in step.statements(layout)]
