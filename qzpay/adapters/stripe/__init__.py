"""Stripe as qzpay's payment provider: ``StripeProvider`` (install ``qzpay[stripe]``).

``provider`` holds the adapter, ``results`` reads Stripe's objects as neutral results,
``errors`` maps the SDK's exceptions, ``webhooks`` checks signatures and maps events.

>>> from qzpay.adapters.stripe import StripeProvider
>>> StripeProvider(api_key="sk_test_123", webhook_secret="whsec_123").name
'stripe'
"""

from __future__ import annotations

from qzpay.adapters.stripe.errors import StripeProviderError
from qzpay.adapters.stripe.provider import (
    DEFAULT_API_VERSION,
    REFUND_SCAN_LIMIT,
    StripeProvider,
    StripeSetupIntent,
)
from qzpay.adapters.stripe.webhooks import SIGNATURE_HEADER

__all__ = [
    "DEFAULT_API_VERSION",
    "REFUND_SCAN_LIMIT",
    "SIGNATURE_HEADER",
    "StripeProvider",
    "StripeProviderError",
    "StripeSetupIntent",
]
