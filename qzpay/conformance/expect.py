"""How a conformance test says which rule broke and how to fix it.

Every failure reads ``"<property>: <what the adapter did> — <how to fix it>"``, e.g.
``"tenancy: a store bound to tenant 'b' read tenant 'a''s customer by its exact id — apply
the transaction's scope (tenant_id) to every WHERE"``, and is reported without a traceback
into the suite: the message is the diagnosis.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import pytest


class Expectations:
    """The checks of one property, each failing with the property's name in front."""

    def __init__(self, prop: str) -> None:
        self.prop = prop

    def broke(self, what: str, fix: str) -> NoReturn:
        pytest.fail(f"{self.prop}: {what} — {fix}", pytrace=False)

    def that(self, ok: object, what: str, fix: str) -> None:
        """Fail with ``what`` (the rule as broken) and ``fix`` unless ``ok``."""
        if not ok:
            self.broke(what, fix)

    @contextmanager
    def refusal(
        self, errors: type[BaseException] | tuple[type[BaseException], ...], what: str, fix: str
    ) -> Iterator[None]:
        """The block must raise one of ``errors``; ``what`` says what was wrongly allowed.

        Use it around a whole ``async with store.transaction(...)``: adapters may buffer
        writes, so a refusal may surface at the call, at a flush or at commit.
        """
        expected = errors if isinstance(errors, tuple) else (errors,)
        names = " or ".join(error.__name__ for error in expected)
        wrong: Exception | None = None
        try:
            yield
        except expected:
            return
        except Exception as error:
            wrong = error
        if wrong is not None:  # reported outside the except block: no chained traceback
            self.broke(
                f"{what} raised {type(wrong).__name__} ({wrong}) where {names} was expected", fix
            )
        self.broke(f"{what} was allowed (expected {names})", fix)

    @contextmanager
    def precondition(
        self,
        errors: type[BaseException] | tuple[type[BaseException], ...],
        what: str,
        owner: str,
    ) -> Iterator[None]:
        """Like ``refusal``, for a refusal that is another property's rule (``owner``): when
        the block is allowed, the test is skipped (that group fails it), not failed here, so
        that an adapter breaking one rule fails one property."""
        expected = errors if isinstance(errors, tuple) else (errors,)
        names = " or ".join(error.__name__ for error in expected)
        wrong: Exception | None = None
        try:
            yield
        except expected:
            return
        except Exception as error:
            wrong = error
        if wrong is not None:
            self.broke(
                f"{what} raised {type(wrong).__name__} ({wrong}) where {names} was expected",
                "raise the refusal the port names, before the transaction reports success",
            )
        pytest.skip(f"{what} was allowed: that is the {owner} group's rule, nothing to roll back")
