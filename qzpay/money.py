"""Money: integer minor units, a currency table, one rounding mode and exact splits.

An amount is always an ``int`` count of the currency's minor unit (cents for USD, yen for
JPY, fils for KWD): ``float`` cannot hold 0.10 exactly and ``Decimal`` invites silent
precision choices, while an ``int`` adds, compares and stores exactly everywhere (SQL
``BIGINT``, JSON, every provider API). How many minor units make a major one is the
currency's ISO 4217 ``exponent``, kept in :data:`CURRENCIES`.

Percentages (discounts, commissions, tax rates) are ``Decimal`` and the only place a
fraction of an amount is rounded back to minor units is :func:`percent_of`, with
:data:`ROUNDING`. :data:`ROUNDING` is ``ROUND_HALF_UP`` (a half goes away from zero):
it is the rule customers, accountants and tax authorities expect from a receipt, it is
symmetric for negative amounts (a credit rounds like the charge it undoes), and it is
what Stripe and most provider dashboards show, so our numbers reconcile with theirs.
Banker's rounding would be fairer over millions of roundings but surprises people reading
one invoice. When a whole must be split into parts (vendor commissions, proration across
lines) rounding each part independently can lose or invent a minor unit, so
:func:`allocate` distributes the remainder and the parts always sum to the whole.

>>> amount(2900)
2900
>>> percent_of(2999, Decimal("15"))
450
>>> allocate(100, [1, 1, 1])
[34, 33, 33]
>>> format_amount(2900, "usd")
'USD 29.00'
"""

from __future__ import annotations

import decimal
from collections.abc import Mapping, Sequence
from decimal import Decimal
from types import MappingProxyType
from typing import Final, TypeGuard

import attrs

from qzpay.errors import ValidationError

__all__ = [
    "CURRENCIES",
    "MAX_AMOUNT",
    "ROUNDING",
    "Currency",
    "allocate",
    "amount",
    "currency",
    "format_amount",
    "percent_of",
]

MAX_AMOUNT: Final = 2**63 - 1
"""The largest amount accepted: it fits a signed 64-bit column (SQL ``BIGINT``)."""

ROUNDING: Final = decimal.ROUND_HALF_UP
"""The one rounding mode of qzpay (see the module docstring for why)."""


def _check_code(instance: Currency, attribute: attrs.Attribute[str], value: str) -> None:
    if not (len(value) == 3 and value.isascii() and value.isalpha() and value.isupper()):
        raise ValueError(f"currency code must be 3 uppercase ASCII letters, got {value!r}")


def _check_exponent(instance: Currency, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 4:
        raise ValueError(f"currency exponent must be an int from 0 to 4, got {value!r}")


@attrs.frozen(kw_only=True)
class Currency:
    """An ISO 4217 currency: its code and how many decimal digits its minor unit has.

    ``exponent`` is what turns minor units into a display amount: 2900 USD (exponent 2)
    is 29.00, 500 JPY (exponent 0) is 500, 1234 KWD (exponent 3) is 1.234.
    """

    code: str = attrs.field(validator=_check_code)
    exponent: int = attrs.field(validator=_check_exponent)
    name: str


def _table(*rows: tuple[str, int, str]) -> Mapping[str, Currency]:
    return MappingProxyType(
        {code: Currency(code=code, exponent=exponent, name=name) for code, exponent, name in rows}
    )


CURRENCIES: Final[Mapping[str, Currency]] = _table(
    ("USD", 2, "US Dollar"),
    ("EUR", 2, "Euro"),
    ("GBP", 2, "Pound Sterling"),
    ("JPY", 0, "Yen"),
    ("BRL", 2, "Brazilian Real"),
    ("ARS", 2, "Argentine Peso"),
    ("CLP", 0, "Chilean Peso"),
    ("MXN", 2, "Mexican Peso"),
    ("COP", 2, "Colombian Peso"),
    ("UYU", 2, "Peso Uruguayo"),
    ("PEN", 2, "Sol"),
    ("PYG", 0, "Guarani"),
    ("CAD", 2, "Canadian Dollar"),
    ("AUD", 2, "Australian Dollar"),
    ("NZD", 2, "New Zealand Dollar"),
    ("CHF", 2, "Swiss Franc"),
    ("SEK", 2, "Swedish Krona"),
    ("NOK", 2, "Norwegian Krone"),
    ("DKK", 2, "Danish Krone"),
    ("PLN", 2, "Zloty"),
    ("CZK", 2, "Czech Koruna"),
    ("ISK", 0, "Iceland Krona"),
    ("INR", 2, "Indian Rupee"),
    ("CNY", 2, "Yuan Renminbi"),
    ("HKD", 2, "Hong Kong Dollar"),
    ("SGD", 2, "Singapore Dollar"),
    ("KRW", 0, "Won"),
    ("VND", 0, "Dong"),
    ("ZAR", 2, "Rand"),
    ("KWD", 3, "Kuwaiti Dinar"),
    ("BHD", 3, "Bahraini Dinar"),
    ("JOD", 3, "Jordanian Dinar"),
    ("OMR", 3, "Rial Omani"),
    ("TND", 3, "Tunisian Dinar"),
)
"""Every currency qzpay accepts, by uppercase ISO 4217 code (read-only)."""


def _shown(value: object) -> str:
    """Describe a rejected value for an error message without echoing arbitrary objects."""
    if isinstance(value, str):
        return repr(value) if len(value) <= 16 else repr(value[:16] + "...")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return type(value).__name__


def _is_int(value: object) -> TypeGuard[int]:
    # bool is an int subclass, but True is never a meaningful amount or weight.
    return isinstance(value, int) and not isinstance(value, bool)


def currency(code: object, *, field: str = "currency") -> Currency:
    """Return the :class:`Currency` for a 3-letter ISO 4217 code, in any case.

    This is the boundary check for currency inputs: a non-string, a wrong length or a code
    missing from :data:`CURRENCIES` raises :class:`~qzpay.errors.ValidationError` naming
    ``field``, so an unknown currency never reaches storage or a provider.

    >>> currency("jpy").exponent
    0
    """
    if not isinstance(code, str) or len(code) != 3:
        rule = "must be a 3-letter ISO 4217 code"
    elif (found := CURRENCIES.get(code.upper())) is not None:
        return found
    else:
        rule = "must be a supported ISO 4217 code"
    raise ValidationError(f"{rule}, got {_shown(code)}", field=field, rule=rule)


def amount(value: object, *, field: str = "amount", minimum: int = 0) -> int:
    """Return ``value`` if it is an ``int`` of minor units from ``minimum`` to MAX_AMOUNT.

    Only a real ``int`` is accepted: ``bool``, ``float``, ``Decimal`` and numeric strings
    are refused rather than converted, because a silent conversion is exactly how 29.99
    becomes 2998 cents or "29" becomes 29 cents instead of 2900. Anything else raises
    :class:`~qzpay.errors.ValidationError` naming ``field``.

    >>> amount(-500, field="balance", minimum=-10_000)
    -500
    """
    if not _is_int(value):
        rule = "must be an int of minor units"
        raise ValidationError(f"{rule}, got {_shown(value)}", field=field, rule=rule)
    if not minimum <= value <= MAX_AMOUNT:
        rule = f"must be between {minimum} and {MAX_AMOUNT}"
        raise ValidationError(f"{rule}, got {value}", field=field, rule=rule)
    return value


def percent_of(value: int, percent: Decimal) -> int:
    """Return ``percent`` % of ``value`` minor units, rounded once with :data:`ROUNDING`.

    The product is computed exactly in ``Decimal`` (a private context sized to the operands
    and trapping any inexact step), never through ``float``, so 15% of 2999 is exactly
    449.85 before rounding to 450. ``percent`` must be a finite ``Decimal`` from 0 to 100;
    a ``float`` percent is refused because 0.1 is not one tenth in binary. A negative
    ``value`` (a credit) rounds symmetrically with the charge it mirrors.

    >>> percent_of(1000, Decimal("12.5"))
    125
    >>> percent_of(-5, Decimal("50"))
    -3
    """
    if not _is_int(value):
        rule = "must be an int of minor units"
        raise ValidationError(f"{rule}, got {_shown(value)}", field="value", rule=rule)
    if not isinstance(percent, Decimal) or not percent.is_finite():
        rule = "must be a finite Decimal"
        raise ValidationError(f"{rule}, got {_shown(percent)}", field="percent", rule=rule)
    if not 0 <= percent <= 100:
        rule = "must be between 0 and 100"
        raise ValidationError(f"{rule}, got {percent}", field="percent", rule=rule)
    digits = len(str(abs(value))) + len(percent.as_tuple().digits)
    exact = decimal.Context(
        prec=digits + 1,
        rounding=ROUNDING,
        Emax=decimal.MAX_EMAX,
        Emin=decimal.MIN_EMIN,
        traps=[decimal.Inexact, decimal.Rounded, decimal.InvalidOperation],
    )
    share = exact.scaleb(exact.multiply(Decimal(value), percent), -2)
    return int(exact.to_integral_value(share))


def allocate(total: int, weights: Sequence[int]) -> list[int]:
    """Split ``total`` in proportion to ``weights`` so the parts sum exactly to ``total``.

    Largest-remainder method: every part first gets the floor of its exact share
    ``total * weight / sum(weights)``; the minor units left over go, one each, to the parts
    with the largest fractional remainders, ties to the earlier part. So each part is
    within one minor unit of its exact share, a zero weight always gets 0, and the result
    depends only on the inputs.

    Weights are non-negative ``int``s with a positive sum (ratios, such as a commission
    rate, should be scaled to integers first, e.g. basis points). A negative ``total``
    (a refund or a credit being split back) is allocated symmetrically: the result is the
    negation of ``allocate(-total, weights)``, so a refund undoes a split part for part.

    >>> allocate(100, [1, 1, 1])
    [34, 33, 33]
    >>> allocate(-100, [1, 1, 1])
    [-34, -33, -33]
    >>> allocate(1000, [8500, 1500, 0])
    [850, 150, 0]
    """
    if not _is_int(total):
        rule = "must be an int of minor units"
        raise ValidationError(f"{rule}, got {_shown(total)}", field="total", rule=rule)
    if isinstance(weights, str) or not isinstance(weights, Sequence):
        rule = "must be a sequence of ints"
        raise ValidationError(f"{rule}, got {_shown(weights)}", field="weights", rule=rule)
    for weight in weights:
        if not _is_int(weight) or weight < 0:
            rule = "must be non-negative ints"
            raise ValidationError(f"{rule}, got {_shown(weight)}", field="weights", rule=rule)
    whole = sum(weights)
    if whole <= 0:
        rule = "must have a positive sum"
        raise ValidationError(rule, field="weights", rule=rule)
    if total < 0:
        return [-part for part in allocate(-total, weights)]

    parts: list[int] = []
    remainders: list[int] = []
    for weight in weights:
        part, remainder = divmod(total * weight, whole)
        parts.append(part)
        remainders.append(remainder)
    left = total - sum(parts)
    # Stable sort: equal remainders keep index order, so ties go to the earlier part.
    for index in sorted(range(len(parts)), key=lambda i: -remainders[i])[:left]:
        parts[index] += 1
    return parts


def format_amount(value: int, code: str) -> str:
    """Render minor units for humans: ``"USD 29.00"``, ``"JPY 500"``, ``"KWD 1.234"``.

    For logs, emails, the CLI and the demo, not for parsing. The ISO code comes first and
    no digit grouping is added, so the text reads the same in every locale (``1.234`` is
    not mistaken for a thousands separator next to ``KWD``). Negative amounts read
    ``"USD -5.00"``.

    >>> format_amount(123456, "usd")
    'USD 1234.56'
    """
    found = currency(code)
    if not _is_int(value):
        rule = "must be an int of minor units"
        raise ValidationError(f"{rule}, got {_shown(value)}", field="amount", rule=rule)
    sign = "-" if value < 0 else ""
    major, minor = divmod(abs(value), 10**found.exponent)
    if found.exponent == 0:
        return f"{found.code} {sign}{major}"
    return f"{found.code} {sign}{major}.{minor:0{found.exponent}d}"
