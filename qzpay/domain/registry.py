"""Which table each domain type lives in, and the rules storage must keep for it.

This is the one description of the data model that every storage adapter reads: the SQL
schema builder turns it into tables, unique indexes and foreign keys; the memory adapter
turns it into dictionaries and checks. Columns are the attrs fields of the domain type, so
a field added to a domain class is a column added everywhere.

Whether a kind is soft-deletable, optimistically locked or claimable by job runners is
derived from its fields (``deleted_at``; ``version``; ``due_at``, ``claimed_by`` and
``claimed_until``), never declared twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Generic, TypeVar

import attrs

from qzpay.domain.access import (
    CustomerEntitlement,
    CustomerLimit,
    Entitlement,
    Limit,
    UsageRecord,
)
from qzpay.domain.catalog import Addon, Plan, Price
from qzpay.domain.checkout import Checkout
from qzpay.domain.customers import Customer, CustomerProviderRef
from qzpay.domain.enums import PaymentStatus
from qzpay.domain.invoices import Invoice, InvoiceLine, InvoicePayment
from qzpay.domain.marketplace import Vendor, VendorPayout
from qzpay.domain.payments import Payment, PaymentMethod, Refund
from qzpay.domain.promotions import PromoCode, PromoCodeUsage
from qzpay.domain.records import (
    AuditLog,
    IdempotencyKey,
    JobExecution,
    WebhookEvent,
    WebhookProcessing,
)
from qzpay.domain.subscriptions import Subscription, SubscriptionAddon

E = TypeVar("E")

LEASE_COLUMNS = ("claimed_by", "claimed_until")
"""Written only by a claim, never by an update (a user's edit must not drop a job's lease)."""


@attrs.frozen(eq=False)  # keys are compared (and hashed) by identity: one object per key
class UniqueKey:
    """Columns whose values one row at most may hold, among the rows where ``where`` holds.

    ``where`` narrows the key to rows with those column values (a partial unique index):
    ``UniqueKey(("customer_id",), where={"is_default": True})`` allows one default payment
    method per customer and any number of others.
    """

    columns: tuple[str, ...]
    where: Mapping[str, object] = attrs.field(factory=dict)

    @property
    def name(self) -> str:
        """The key's part of its index name: ``customer_id_is_default``."""
        return "_".join((*self.columns, *self.where))

    def holds(self, row: Any) -> bool:
        """Whether ``row`` is one of the rows the key applies to."""
        return all(getattr(row, column) == value for column, value in self.where.items())


def _unique_keys(keys: tuple[tuple[str, ...] | UniqueKey, ...]) -> tuple[UniqueKey, ...]:
    return tuple(key if isinstance(key, UniqueKey) else UniqueKey(tuple(key)) for key in keys)


@attrs.frozen(kw_only=True)
class EntitySpec(Generic[E]):
    """Storage rules for one domain type.

    ``unique`` keys are unique among the rows of one livemode (and tenant, in multi mode)
    and, for soft-deletable kinds, among rows not deleted. ``references`` maps a column to
    the table it points at; the reference is only valid inside the same livemode and tenant.
    """

    kind: type[E]
    table: str
    name: str
    unique: tuple[UniqueKey, ...] = attrs.field(default=(), converter=_unique_keys)
    references: Mapping[str, str] = attrs.field(factory=dict)
    append_only: bool = False
    defaults: Mapping[str, str | bool | int] = attrs.field(factory=dict)
    """Database defaults of NOT NULL columns added to an existing table by a migration
    (a database cannot add such a column without one): the same on new schemas."""
    fields: tuple[str, ...] = attrs.field(init=False)
    soft_delete: bool = attrs.field(init=False)
    versioned: bool = attrs.field(init=False)
    claimable: bool = attrs.field(init=False)

    @fields.default
    def _fields(self) -> tuple[str, ...]:
        kind: Any = self.kind
        attrs.resolve_types(kind)
        return tuple(field.name for field in attrs.fields(kind))

    @soft_delete.default
    def _soft_delete(self) -> bool:
        return "deleted_at" in self.fields

    @versioned.default
    def _versioned(self) -> bool:
        return "version" in self.fields

    @claimable.default
    def _claimable(self) -> bool:
        return all(name in self.fields for name in ("due_at", *LEASE_COLUMNS))

    @property
    def label(self) -> str:
        """The kind in words, for messages: ``payment method``."""
        return self.name.replace("_", " ")

    def unique_key(self, columns: tuple[str, ...]) -> UniqueKey | None:
        """The unique key on exactly ``columns``, if the kind has one."""
        return next((key for key in self.unique if key.columns == columns), None)


def _spec(kind: type[E], table: str, name: str, **rules: Any) -> EntitySpec[E]:
    return EntitySpec(kind=kind, table=table, name=name, **rules)


# Ordered so that a table comes after every table it references (DDL order).
SPECS: tuple[EntitySpec[Any], ...] = (
    _spec(Customer, "customers", "customer", unique=(("external_id",),)),
    _spec(
        CustomerProviderRef,
        "customer_provider_refs",
        "customer_provider_ref",
        unique=(("provider", "provider_customer_id"), ("customer_id", "provider")),
        references={"customer_id": "customers"},
    ),
    _spec(Plan, "plans", "plan"),
    _spec(Price, "prices", "price", references={"plan_id": "plans"}),
    _spec(Addon, "addons", "addon"),
    _spec(
        PaymentMethod,
        "payment_methods",
        "payment_method",
        unique=(
            ("provider", "provider_id"),
            UniqueKey(("customer_id",), where={"is_default": True}),
        ),
        references={"customer_id": "customers"},
    ),
    _spec(
        PromoCode,
        "promo_codes",
        "promo_code",
        unique=(("code",),),
        defaults={"duration": "once", "first_time_only": False},
    ),
    _spec(
        Subscription,
        "subscriptions",
        "subscription",
        unique=(("provider", "provider_id"),),
        defaults={"dunning_attempts": 0},
        references={
            "customer_id": "customers",
            "plan_id": "plans",
            "price_id": "prices",
            "default_payment_method_id": "payment_methods",
            "promo_code_id": "promo_codes",
        },
    ),
    _spec(
        SubscriptionAddon,
        "subscription_addons",
        "subscription_addon",
        references={"subscription_id": "subscriptions", "addon_id": "addons"},
    ),
    _spec(
        Invoice,
        "invoices",
        "invoice",
        unique=(("number",),),
        defaults={"attempt_count": 0},
        references={"customer_id": "customers", "subscription_id": "subscriptions"},
    ),
    _spec(InvoiceLine, "invoice_lines", "invoice_line", references={"invoice_id": "invoices"}),
    _spec(
        Payment,
        "payments",
        "payment",
        unique=(
            ("provider", "provider_id"),
            # One open attempt per invoice: a second charge waits for the first's outcome.
            UniqueKey(("invoice_id",), where={"status": PaymentStatus.PENDING}),
        ),
        references={
            "customer_id": "customers",
            "subscription_id": "subscriptions",
            "invoice_id": "invoices",
            "payment_method_id": "payment_methods",
        },
    ),
    _spec(
        InvoicePayment,
        "invoice_payments",
        "invoice_payment",
        unique=(("invoice_id", "payment_id"),),
        references={"invoice_id": "invoices", "payment_id": "payments"},
    ),
    _spec(
        Refund,
        "refunds",
        "refund",
        unique=(("provider", "provider_id"),),
        references={"payment_id": "payments"},
    ),
    _spec(
        PromoCodeUsage,
        "promo_code_usage",
        "promo_code_usage",
        references={
            "promo_code_id": "promo_codes",
            "customer_id": "customers",
            "subscription_id": "subscriptions",
        },
    ),
    _spec(Vendor, "vendors", "vendor", unique=(("external_id",),)),
    _spec(VendorPayout, "vendor_payouts", "vendor_payout", references={"vendor_id": "vendors"}),
    _spec(Entitlement, "entitlements", "entitlement", unique=(("key",),)),
    _spec(
        CustomerEntitlement,
        "customer_entitlements",
        "customer_entitlement",
        references={"customer_id": "customers"},
    ),
    _spec(Limit, "limits", "limit", unique=(("key",),)),
    _spec(
        CustomerLimit,
        "customer_limits",
        "customer_limit",
        unique=(("customer_id", "limit_key"),),
        references={"customer_id": "customers"},
    ),
    _spec(
        UsageRecord,
        "usage_records",
        "usage_record",
        unique=(("idempotency_key",),),
        references={"customer_id": "customers", "subscription_id": "subscriptions"},
    ),
    _spec(Checkout, "checkouts", "checkout", references={"customer_id": "customers"}),
    _spec(AuditLog, "audit_logs", "audit_log", append_only=True),
    _spec(
        WebhookEvent,
        "webhook_events",
        "webhook_event",
        unique=(("provider", "provider_event_id"),),
        append_only=True,
    ),
    _spec(
        WebhookProcessing,
        "webhook_processing",
        "webhook_processing",
        # No foreign key to webhook_events: one needs a (id, scope) key on that table, which
        # SQLite cannot add to the existing append-only table without rebuilding it; the
        # two rows are written together, in one transaction, and never deleted.
        unique=(("webhook_event_id",),),
    ),
    _spec(JobExecution, "job_executions", "job_execution"),
    _spec(IdempotencyKey, "idempotency_keys", "idempotency_key", unique=(("operation", "key"),)),
)

_BY_KIND: dict[type[Any], EntitySpec[Any]] = {spec.kind: spec for spec in SPECS}
BY_TABLE: Mapping[str, EntitySpec[Any]] = {spec.table: spec for spec in SPECS}


def spec_for(kind: type[E]) -> EntitySpec[E]:
    """The storage rules for ``kind``; a type that is not a table is a programming error."""
    try:
        return _BY_KIND[kind]
    except KeyError:
        raise TypeError(f"{kind.__name__} is not a stored entity kind") from None
