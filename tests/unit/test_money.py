"""Money rules: int minor units, known currencies, one rounding mode, exact splits."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import attrs
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from qzpay.errors import ValidationError
from qzpay.money import (
    CURRENCIES,
    MAX_AMOUNT,
    ROUNDING,
    Currency,
    allocate,
    amount,
    currency,
    format_amount,
    percent_of,
)

# --- currencies -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "exponent"),
    [
        ("USD", 2),
        ("EUR", 2),
        ("GBP", 2),
        ("JPY", 0),
        ("BRL", 2),
        ("ARS", 2),
        ("CLP", 0),
        ("MXN", 2),
        ("COP", 2),
        ("UYU", 2),
        ("PEN", 2),
        ("KWD", 3),
        ("CAD", 2),
        ("AUD", 2),
        ("CHF", 2),
        ("BHD", 3),
        ("KRW", 0),
    ],
)
def test_the_currency_table_knows_each_code_and_its_exponent(code: str, exponent: int) -> None:
    assert CURRENCIES[code].exponent == exponent
    assert CURRENCIES[code].code == code
    assert CURRENCIES[code].name


def test_the_currency_table_is_keyed_by_its_own_codes() -> None:
    assert all(key == found.code for key, found in CURRENCIES.items())


def test_the_currency_table_is_read_only() -> None:
    with pytest.raises(TypeError):
        CURRENCIES["XYZ"] = Currency(code="XYZ", exponent=2, name="Nope")  # type: ignore[index]


def test_a_currency_is_immutable_and_checks_its_invariants() -> None:
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        CURRENCIES["USD"].exponent = 3  # type: ignore[misc]
    with pytest.raises(ValueError, match="3 uppercase"):
        Currency(code="usd", exponent=2, name="lowercase")
    with pytest.raises(ValueError, match="exponent"):
        Currency(code="XXA", exponent=-1, name="negative")


@pytest.mark.parametrize("code", ["usd", "Usd", "USD", "jPy"])
def test_currency_accepts_a_code_in_any_case(code: str) -> None:
    assert currency(code) is CURRENCIES[code.upper()]


def test_currency_rejects_an_unknown_code_naming_field_and_rule() -> None:
    with pytest.raises(ValidationError) as caught:
        currency("XYZ", field="plan.currency")
    assert caught.value.field == "plan.currency"
    assert caught.value.rule == "must be a supported ISO 4217 code"
    assert caught.value.message == "must be a supported ISO 4217 code, got 'XYZ'"
    assert caught.value.code == "validation_error"


@pytest.mark.parametrize("code", ["US", "USDD", "", 840, None, b"USD"])
def test_currency_rejects_what_is_not_a_three_letter_string(code: object) -> None:
    with pytest.raises(ValidationError) as caught:
        currency(code)
    assert caught.value.field == "currency"
    assert caught.value.rule == "must be a 3-letter ISO 4217 code"


# --- amounts ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 1, 2900, MAX_AMOUNT])
def test_amount_accepts_int_minor_units(value: int) -> None:
    assert amount(value) == value


@pytest.mark.parametrize(
    "value", [29.0, 29.99, True, False, Decimal("29"), "2900", None, Fraction(29)]
)
def test_amount_rejects_anything_but_a_real_int(value: object) -> None:
    with pytest.raises(ValidationError) as caught:
        amount(value, field="unit_amount")
    assert caught.value.field == "unit_amount"
    assert caught.value.rule == "must be an int of minor units"


def test_amount_rejects_negative_values_by_default() -> None:
    with pytest.raises(ValidationError) as caught:
        amount(-1)
    assert caught.value.field == "amount"
    assert caught.value.rule == f"must be between 0 and {MAX_AMOUNT}"
    assert "got -1" in caught.value.message


def test_amount_rejects_what_does_not_fit_a_bigint() -> None:
    with pytest.raises(ValidationError, match="between"):
        amount(MAX_AMOUNT + 1)


def test_amount_honours_a_custom_minimum() -> None:
    assert amount(-500, minimum=-1000) == -500
    assert amount(1, minimum=1) == 1
    with pytest.raises(ValidationError, match="between 1 and"):
        amount(0, minimum=1)


# --- percentages and rounding -----------------------------------------------------------


def test_the_one_rounding_mode_is_half_up() -> None:
    assert ROUNDING == "ROUND_HALF_UP"


@pytest.mark.parametrize(
    ("value", "percent", "expected"),
    [
        (2999, Decimal("15"), 450),  # 449.85
        (1000, Decimal("12.5"), 125),
        (5, Decimal("50"), 3),  # 2.5: a half goes up
        (3, Decimal("50"), 2),  # 1.5
        (1, Decimal("49.99"), 0),
        (-5, Decimal("50"), -3),  # a credit mirrors the charge
        (2900, Decimal("0"), 0),
        (2900, Decimal("100"), 2900),
        (MAX_AMOUNT, Decimal("100"), MAX_AMOUNT),
        (MAX_AMOUNT, Decimal("33.33333333333333333333333333333333"), 3074457345618258602),
        (10**6, Decimal("1E-999999"), 0),
    ],
)
def test_percent_of_rounds_once_half_up(value: int, percent: Decimal, expected: int) -> None:
    assert percent_of(value, percent) == expected


@given(
    value=st.integers(min_value=-MAX_AMOUNT, max_value=MAX_AMOUNT),
    percent=st.decimals(min_value=0, max_value=100, allow_nan=False, allow_infinity=False),
)
def test_percent_of_matches_exact_rational_arithmetic(value: int, percent: Decimal) -> None:
    exact = Fraction(value) * Fraction(percent) / 100
    magnitude = abs(exact)
    rounded = int(magnitude) + (1 if magnitude - int(magnitude) >= Fraction(1, 2) else 0)
    assert percent_of(value, percent) == (rounded if exact >= 0 else -rounded)


@pytest.mark.parametrize(
    "percent",
    [Decimal("-0.01"), Decimal("100.01"), Decimal("NaN"), Decimal("Infinity"), 15, 15.0, "15"],
)
def test_percent_of_rejects_a_percent_outside_0_to_100_or_not_decimal(percent: object) -> None:
    with pytest.raises(ValidationError) as caught:
        percent_of(1000, percent)  # type: ignore[arg-type]
    assert caught.value.field == "percent"


@pytest.mark.parametrize("value", [10.0, True, Decimal("10")])
def test_percent_of_rejects_a_value_that_is_not_minor_units(value: object) -> None:
    with pytest.raises(ValidationError) as caught:
        percent_of(value, Decimal("10"))  # type: ignore[arg-type]
    assert caught.value.field == "value"


# --- allocation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "weights", "expected"),
    [
        (100, [1, 1, 1], [34, 33, 33]),
        (101, [1, 1, 1], [34, 34, 33]),
        (2, [1, 1, 1], [1, 1, 0]),
        (1000, [8500, 1500], [850, 150]),
        (1, [1, 3], [0, 1]),  # the larger remainder wins over the earlier part
        (5, [0, 1, 0, 1], [0, 3, 0, 2]),
        (0, [1, 2], [0, 0]),
        (7, [5], [7]),
        (-100, [1, 1, 1], [-34, -33, -33]),
    ],
)
def test_allocate_splits_by_largest_remainder(
    total: int, weights: list[int], expected: list[int]
) -> None:
    assert allocate(total, weights) == expected


@given(
    total=st.integers(min_value=-(10**12), max_value=10**12),
    weights=st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=12).filter(
        lambda weights: sum(weights) > 0
    ),
)
@example(total=MAX_AMOUNT, weights=[1, 1, 1])
@example(total=10, weights=[0, 0, 1])
def test_allocated_parts_sum_to_total_and_stay_within_one_of_their_share(
    total: int, weights: list[int]
) -> None:
    parts = allocate(total, weights)
    whole = sum(weights)
    assert sum(parts) == total
    assert len(parts) == len(weights)
    for part, weight in zip(parts, weights, strict=True):
        # |part - total * weight / whole| < 1, kept in integers to stay exact.
        assert abs(part * whole - total * weight) < whole
        if weight == 0:
            assert part == 0


@given(
    total=st.integers(min_value=0, max_value=10**9),
    weights=st.lists(st.integers(min_value=1, max_value=100), min_size=1, max_size=8),
)
def test_allocate_is_symmetric_for_negative_totals(total: int, weights: list[int]) -> None:
    assert allocate(-total, weights) == [-part for part in allocate(total, weights)]


@given(total=st.integers(min_value=0, max_value=10**6), size=st.integers(1, 10))
def test_allocate_gives_ties_to_the_earlier_parts(total: int, size: int) -> None:
    parts = allocate(total, [1] * size)
    assert parts == sorted(parts, reverse=True)
    assert max(parts) - min(parts) <= 1


@pytest.mark.parametrize(
    ("total", "weights", "field"),
    [
        (100, [], "weights"),
        (100, [0, 0], "weights"),
        (100, [1, -1, 1], "weights"),
        (100, [1.5, 1], "weights"),
        (100, [True, 1], "weights"),
        (100, "11", "weights"),
        (100, {1, 2}, "weights"),
        (100.0, [1, 1], "total"),
        (True, [1, 1], "total"),
    ],
)
def test_allocate_rejects_bad_inputs_naming_the_field(
    total: object, weights: object, field: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        allocate(total, weights)  # type: ignore[arg-type]
    assert caught.value.field == field


# --- display ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "code", "expected"),
    [
        (2900, "USD", "USD 29.00"),
        (500, "JPY", "JPY 500"),
        (1234, "KWD", "KWD 1.234"),
        (5, "usd", "USD 0.05"),
        (0, "EUR", "EUR 0.00"),
        (-500, "USD", "USD -5.00"),
        (-1, "BHD", "BHD -0.001"),
        (123456, "BRL", "BRL 1234.56"),
        (-1500, "CLP", "CLP -1500"),
    ],
)
def test_format_amount_reads_like_a_receipt(value: int, code: str, expected: str) -> None:
    assert format_amount(value, code) == expected


def test_format_amount_rejects_an_unknown_currency_or_a_float() -> None:
    with pytest.raises(ValidationError, match="supported ISO 4217"):
        format_amount(100, "XYZ")
    with pytest.raises(ValidationError) as caught:
        format_amount(29.0, "USD")  # type: ignore[arg-type]
    assert caught.value.field == "amount"
