"""Minor units to MercadoPago's decimal amounts and back, exactly.

MercadoPago takes ``transaction_amount`` (and refund ``amount``, a preference item's
``unit_price``) as a decimal number of major units: 2990 BRL minor units is ``29.9``. qzpay
never computes with floats; the conversion is exact in ``Decimal`` (a power-of-ten shift of
an int). The SDK serializes its bodies with the standard library's ``JSONEncoder``, which
cannot write a ``Decimal``, so the exact value is handed over as the ``float`` whose
shortest repr (what ``json`` writes) spells the same decimal, and that round trip is
checked: an amount with more significant digits than a double holds is refused instead of
being sent rounded (docs/decisions/0031-mercadopago-amounts.md).

>>> to_major(2990, "BRL"), to_major(1500, "CLP")
(29.9, 1500.0)
>>> from_major("29.9", "BRL")
2990
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from qzpay import money
from qzpay.errors import ProviderError

MERCADOPAGO_CURRENCIES = frozenset({"ARS", "BRL", "CLP", "COP", "MXN", "PEN", "UYU"})
"""The currencies of MercadoPago's sites: an account charges in its site's currency."""


def check_currency(code: str) -> money.Currency:
    """The currency of a MercadoPago amount, refused before any request when the API
    cannot settle it (MercadoPago charges in the account's site currency)."""
    found = money.currency(code)
    if found.code not in MERCADOPAGO_CURRENCIES:
        raise ProviderError(
            f"{found.code} is not a MercadoPago currency "
            f"(one of {', '.join(sorted(MERCADOPAGO_CURRENCIES))})",
            retryable=False,
            field="currency",
            rule="currency_not_supported",
        )
    return found


def exact(amount: int, code: str) -> Decimal:
    """``amount`` minor units of ``code`` as an exact ``Decimal`` of major units."""
    found = money.currency(code)
    return Decimal(money.amount(amount, minimum=1)).scaleb(-found.exponent)


def to_major(amount: int, code: str) -> float:
    """``amount`` minor units as the number the SDK writes into its JSON body.

    The ``float`` is only a carrier for the JSON encoder: its repr is checked to be the
    exact decimal, so what goes over the wire is exactly ``exact(amount, code)``.
    """
    value = exact(amount, code)
    carried = float(value)
    if Decimal(repr(carried)) != value:
        raise ProviderError(
            f"{amount} has more digits than MercadoPago's JSON amounts carry exactly",
            retryable=False,
            field="amount",
            rule="exact_decimal",
        )
    return carried


def from_major(value: object, code: str) -> int:
    """A decimal amount from MercadoPago (a JSON number or string) as minor units; a value
    that is not a whole number of minor units is an error, never rounded."""
    found = money.currency(code)
    try:
        parsed = Decimal(str(value))
        minor = parsed.scaleb(found.exponent)
        if not parsed.is_finite() or minor != minor.to_integral_value():
            raise InvalidOperation
    except (InvalidOperation, ValueError):
        raise ProviderError(
            f"MercadoPago sent an amount that is not whole {found.code} minor units",
            retryable=False,
            field="amount",
            rule="exact_decimal",
        ) from None
    return int(minor)
