"""qzpay: billing records in your own database, charged through any provider.

>>> import anyio
>>> from qzpay import create_billing
>>> from qzpay.adapters.memory import MemoryStorage
>>> from qzpay.adapters.fake import FakeProvider
>>> async def main() -> str:
...     async with create_billing(storage=MemoryStorage(), provider=FakeProvider()) as billing:
...         return (await billing.customers.create(email="ann@example.com")).email
>>> anyio.run(main)
'ann@example.com'
"""

from qzpay.billing import Billing
from qzpay.bootstrap import create_billing
from qzpay.contracts.events import Event
from qzpay.contracts.storage import Page, Scope
from qzpay.domain.enums import (
    CheckoutStatus,
    DiscountType,
    Interval,
    InvoiceStatus,
    JobStatus,
    PaymentStatus,
    PayoutStatus,
    PromoDuration,
    ProrationBehavior,
    RefundStatus,
    SubscriptionStatus,
    UsageAction,
    WebhookEventStatus,
)
from qzpay.errors import (
    ConfigurationError,
    ConflictError,
    IdempotencyError,
    InvalidStateError,
    NotFoundError,
    OutcomeUnknownError,
    ProviderError,
    QZPayError,
    SignatureError,
    StorageError,
    ValidationError,
)
from qzpay.settings import DunningPolicy

__all__ = [
    "Billing",
    "CheckoutStatus",
    "ConfigurationError",
    "ConflictError",
    "DiscountType",
    "DunningPolicy",
    "Event",
    "IdempotencyError",
    "Interval",
    "InvalidStateError",
    "InvoiceStatus",
    "JobStatus",
    "NotFoundError",
    "OutcomeUnknownError",
    "Page",
    "PaymentStatus",
    "PayoutStatus",
    "PromoDuration",
    "ProrationBehavior",
    "ProviderError",
    "QZPayError",
    "RefundStatus",
    "Scope",
    "SignatureError",
    "StorageError",
    "SubscriptionStatus",
    "UsageAction",
    "ValidationError",
    "WebhookEventStatus",
    "create_billing",
]
