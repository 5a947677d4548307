"""The invoice state machine: every allowed status change, in one table.

Stripe's invoice lifecycle: a ``draft`` is editable and has no number; finalizing makes it
``open`` (numbered, immutable); an open invoice is ``paid``, ``void`` (cancelled: it keeps
its number, so the sequence has no gap) or ``uncollectible`` (written off, but it may still
be paid or voided later). ``paid`` and ``void`` are final. A draft is never voided: it is
deleted (docs/decisions/0014-invoices.md).

>>> invoice_transition(InvoiceStatus.OPEN, InvoiceStatus.PAID)
<InvoiceStatus.PAID: 'paid'>
>>> invoice_transition(InvoiceStatus.DRAFT, InvoiceStatus.VOID)
Traceback (most recent call last):
...
qzpay.errors.InvalidStateError: status: a draft invoice cannot become void
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from qzpay.domain.enums import InvoiceStatus
from qzpay.errors import InvalidStateError

_S = InvoiceStatus
INVOICE_TRANSITIONS: Final[Mapping[InvoiceStatus, frozenset[InvoiceStatus]]] = {
    _S.DRAFT: frozenset({_S.OPEN}),
    _S.OPEN: frozenset({_S.PAID, _S.VOID, _S.UNCOLLECTIBLE}),
    _S.UNCOLLECTIBLE: frozenset({_S.PAID, _S.VOID}),
    _S.PAID: frozenset(),
    _S.VOID: frozenset(),
}

PAYABLE: Final = frozenset({_S.OPEN, _S.UNCOLLECTIBLE})
"""The statuses an invoice can be charged in."""


def invoice_transition(current: InvoiceStatus, target: InvoiceStatus) -> InvoiceStatus:
    """``target`` if an invoice may go there from ``current``; else ``InvalidStateError``."""
    if target not in INVOICE_TRANSITIONS[current]:
        raise InvalidStateError(
            f"a {current.value} invoice cannot become {target.value}",
            field="status",
            rule="transition",
        )
    return target
