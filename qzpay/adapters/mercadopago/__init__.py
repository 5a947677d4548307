"""MercadoPago for qzpay: ``MercadoPagoProvider``, the PaymentProvider port on the official
``mercadopago`` SDK (``pip install 'qzpay[mercadopago]'``).

The package's private modules each hold one idea: ``_transport`` (worker threads, retries
and error answers), ``_amounts`` (minor units to MercadoPago's decimals), ``_statuses``
(payment statuses and rejection details in qzpay's words), ``_webhooks`` (signatures and
notifications) and ``_provider`` (the port's methods).
"""

from qzpay.adapters.mercadopago._amounts import MERCADOPAGO_CURRENCIES
from qzpay.adapters.mercadopago._provider import MercadoPagoProvider
from qzpay.adapters.mercadopago._statuses import FAILURE_DETAILS

__all__ = ["FAILURE_DETAILS", "MERCADOPAGO_CURRENCIES", "MercadoPagoProvider"]
