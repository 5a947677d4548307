"""Which of a payment's refunds at the provider is the one whose answer qzpay lost
(``refund_rules.listed_refund``): by key where the provider echoes keys, else only when
nothing else could be it."""

from __future__ import annotations

from datetime import UTC, datetime

import attrs
import pytest

from qzpay.contracts.provider import RefundResult
from qzpay.domain.enums import RefundStatus
from qzpay.domain.payments import Refund
from qzpay.domain.refund_rules import listed_refund
from qzpay.ids import new_id

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def _refund(amount: int, provider_id: str | None = None, key: str = "k") -> Refund:
    return Refund(
        id=new_id(),
        livemode=False,
        payment_id=new_id(),
        amount=amount,
        currency="USD",
        status=RefundStatus.SUCCEEDED if provider_id else RefundStatus.PENDING,
        provider="fake",
        provider_id=provider_id,
        idempotency_key=key,
        created_at=NOW,
        updated_at=NOW,
    )


def _found(provider_id: str, amount: int, key: str | None = None) -> RefundResult:
    return RefundResult(
        provider_id=provider_id, status="succeeded", amount=amount, idempotency_key=key
    )


def test_a_refund_is_found_by_its_key_among_others() -> None:
    lost = _refund(900, key="qzpay-refund-1")
    listed = [_found("re_1", 900, "qzpay-refund-0"), _found("re_2", 900, "qzpay-refund-1")]
    assert listed_refund(lost, listed, [lost]) == listed[1]


def test_without_keys_the_one_unknown_refund_of_the_same_amount_is_it() -> None:
    known = _refund(100, provider_id="re_1")
    lost = _refund(900)
    listed = [_found("re_1", 100), _found("re_2", 900)]
    assert listed_refund(lost, listed, [known, lost]) == listed[1]


@pytest.mark.parametrize(
    "case",
    ["other_amount", "two_unknown", "two_lost", "none_listed"],
)
def test_without_keys_anything_less_certain_is_none(case: str) -> None:
    lost = _refund(900)
    refunds = [lost]
    listed = [_found("re_2", 900)]
    if case == "other_amount":
        listed = [_found("re_2", 800)]
    elif case == "two_unknown":
        listed = [_found("re_2", 900), _found("re_3", 900)]
    elif case == "two_lost":
        refunds = [lost, attrs.evolve(_refund(900), id=new_id())]
    else:
        listed = []
    assert listed_refund(lost, listed, refunds) is None
