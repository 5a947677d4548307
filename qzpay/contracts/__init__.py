"""The ports of qzpay: what the core needs from storage, providers, time and events.

Ports are ``typing.Protocol``s, so a third-party adapter satisfies them structurally
without importing a base class from us.
"""

from qzpay.contracts.clock import Clock
from qzpay.contracts.events import Event, EventBus, EventHandler
from qzpay.contracts.provider import (
    ChargeRequest,
    ChargeResult,
    CheckoutRequest,
    PaymentProvider,
    ProviderCapabilities,
    ProviderCheckout,
    ProviderCustomer,
    ProviderEvent,
    ProviderPaymentMethod,
    ProviderSubscription,
    ProviderSubscriptionRequest,
    RefundRequest,
    RefundResult,
)
from qzpay.contracts.storage import Filters, Page, Scope, StoragePort, StorageTransaction

__all__ = [
    "ChargeRequest",
    "ChargeResult",
    "CheckoutRequest",
    "Clock",
    "Event",
    "EventBus",
    "EventHandler",
    "Filters",
    "Page",
    "PaymentProvider",
    "ProviderCapabilities",
    "ProviderCheckout",
    "ProviderCustomer",
    "ProviderEvent",
    "ProviderPaymentMethod",
    "ProviderSubscription",
    "ProviderSubscriptionRequest",
    "RefundRequest",
    "RefundResult",
    "Scope",
    "StoragePort",
    "StorageTransaction",
]
