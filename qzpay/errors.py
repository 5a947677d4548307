"""The one error hierarchy of qzpay.

Every error carries a stable ``code`` (safe to switch on, log and show to support) and,
where a single input is to blame, the ``field`` and the ``rule`` it broke. Messages never
contain secrets, card data or full tokens: they are written to be logged.

>>> try:
...     raise ValidationError("must be an int of minor units", field="amount")
... except QZPayError as error:
...     (error.code, error.field)
('validation_error', 'amount')
"""

from __future__ import annotations

from typing import ClassVar


class QZPayError(Exception):
    """Root of every error qzpay raises on purpose."""

    code: ClassVar[str] = "qzpay_error"

    def __init__(self, message: str, *, field: str | None = None, rule: str | None = None) -> None:
        self.message = message
        self.field = field
        self.rule = rule
        super().__init__(f"{field}: {message}" if field else message)


class ValidationError(QZPayError):
    """An input broke a rule; nothing was written."""

    code = "validation_error"


class NotFoundError(QZPayError):
    """The object does not exist in this tenant and livemode (or was deleted)."""

    code = "not_found"


class ConflictError(QZPayError):
    """A concurrent writer won: a stale version, or a unique key already taken."""

    code = "conflict"


class InvalidStateError(QZPayError):
    """The object's current status does not allow the requested change."""

    code = "invalid_state"


class IdempotencyError(QZPayError):
    """An idempotency key was reused with different parameters."""

    code = "idempotency_error"


class ProviderError(QZPayError):
    """The payment provider refused or failed; ``retryable`` says if trying again may help."""

    code = "provider_error"

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = False,
        decline_code: str | None = None,
        field: str | None = None,
        rule: str | None = None,
    ) -> None:
        super().__init__(message, field=field, rule=rule)
        self.retryable = retryable
        self.decline_code = decline_code


class SignatureError(QZPayError):
    """A webhook's signature or timestamp did not verify."""

    code = "signature_error"


class ConfigurationError(QZPayError):
    """qzpay was wired or opened in a way that cannot work (tenancy, schema, event loop)."""

    code = "configuration_error"


class StorageError(QZPayError):
    """The storage failed; ``retryable`` says whether nothing happened and trying again may
    help (the database was busy, a connection dropped before anything was sent)."""

    code = "storage_error"

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class OutcomeUnknownError(StorageError):
    """A commit may or may not have happened (the connection was lost at or after COMMIT).

    Never retryable as it is: read back what the transaction meant to write (by its ids or
    idempotency key) before doing anything again.
    """

    code = "outcome_unknown"

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)
