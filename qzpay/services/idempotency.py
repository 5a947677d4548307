"""Idempotency keys: a retried call with the same key gets the first call's result back.

A keyed call stores its key in the ``IdempotencyKey`` table in its own transaction, and its
result as a JSON snapshot beside it, so a retry (after a timeout, a crash, a restart) is
answered from the snapshot instead of doing the work again (DESIGN §7). The rules:

- Keys are scoped per tenant, livemode (the transaction's scope) and operation
  (``"customers.create"``): the same key in another scope or operation is another key.
- The same key with other parameters is an ``IdempotencyError`` (rule ``same_parameters``):
  a client bug that must not be answered with an unrelated result.
- The key is written in the transaction that does the work, so a call that fails (a
  validation error, a conflict, a crash) keeps no key and may be retried with it.
- Two concurrent calls with one key do the work once: the key's insert is a storage
  ``insert_or_get``, and on a server database the second waits for the first to commit and
  then replays its result.
- A key expires after ``Settings.idempotency_ttl`` (24 hours, as Stripe's); an expired key is
  taken over by the next call as if it were new.

A single-transaction service call reads like this::

    keyed = idempotency.keyed(self._context, "customers.create", idempotency_key, email=email)
    async with self._context.unit_of_work() as uow:
        claim = await idempotency.claim(uow, keyed, Customer)
        if claim.replay is not None:
            return claim.replay
        claim.raise_if_in_progress()
        ...  # the work, in this same transaction
        await idempotency.complete(uow, keyed, customer)

A call that spans transactions around a provider call (a payment) claims and ``bind``s the
key to its pending row in the first, and ``complete``s it when it settles; a retry that
finds the key still without a result gets ``Claim.in_progress`` and the bound
``resource_id``, and resumes that row instead of starting another.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any, Generic, TypeVar
from uuid import UUID

import attrs
import cattrs

from qzpay import validation as check
from qzpay.domain.records import IdempotencyKey
from qzpay.errors import IdempotencyError
from qzpay.ids import new_id
from qzpay.services.context import ServiceContext, UnitOfWork, require
from qzpay.validation import Unset

E = TypeVar("E")

MAX_KEY_LENGTH = 255
"""Stripe's limit on an idempotency key."""


@attrs.frozen(kw_only=True)
class Keyed:
    """One keyed call: its operation, its key, the hash of its parameters, the key's ttl.

    Built by ``keyed(...)`` once the arguments are validated; ``None`` stands for a call
    without a key, and every function here accepts it and then does nothing.
    """

    operation: str
    key: str
    request_hash: str
    ttl: timedelta
    _rows: list[IdempotencyKey] = attrs.field(factory=list, init=False, eq=False, repr=False)
    """The key's row as this call last wrote or read it, so ``bind`` and ``complete`` write
    it without reading it again (one round trip less on a server database)."""

    def _remember(self, row: IdempotencyKey) -> IdempotencyKey:
        self._rows[:] = [row]
        return row


@attrs.frozen(kw_only=True)
class Claim(Generic[E]):
    """What ``claim`` found for a key.

    ``replay`` is the first call's result when it finished; ``in_progress`` says the key is
    stored without a result (a multi-step call still running, or one that crashed midway),
    and ``resource_id`` what it was bound to then. A fresh claim has neither: do the work.
    """

    replay: E | None = None
    resource_id: UUID | None = None
    in_progress: bool = False
    _keyed: Keyed | None = attrs.field(default=None, alias="keyed", repr=False)

    def raise_if_in_progress(self) -> None:
        """Refuse a second call while the first with this key has not finished.

        Single-transaction calls never see their own key in progress (the key and its result
        commit together); one that does found a multi-step call's key, or a crashed one's,
        and must not start the work a second time.
        """
        if self.in_progress:
            key = self._keyed.key if self._keyed is not None else "?"
            raise IdempotencyError(
                f"a call with key {key!r} is still in progress; retry it once that call "
                "has finished",
                field="idempotency_key",
                rule="in_progress",
            )


_UNKEYED: Claim[Any] = Claim()
"""The claim of every call made without a key (frozen, so one value serves them all)."""


def keyed(
    context: ServiceContext, operation: str, key: str | None, /, **params: Any
) -> Keyed | None:
    """The keyed call for ``key`` (``None`` when no key was given), its ``params`` hashed.

    Call it once the arguments are validated (pass the validated values: ``" usd "`` and
    ``"USD"`` are then one request) and before any storage work. The key must be text of 1
    to 255 characters that every adapter can store.

    >>> from qzpay.adapters.clock import FrozenClock
    >>> from qzpay.adapters.fake import FakeProvider
    >>> from qzpay.adapters.memory import MemoryStorage
    >>> from qzpay.adapters.events import InProcessEventBus
    >>> from datetime import UTC, datetime
    >>> context = ServiceContext(storage=MemoryStorage(), provider=FakeProvider(),
    ...     clock=FrozenClock(datetime(2030, 1, 1, tzinfo=UTC)), events=InProcessEventBus(),
    ...     livemode=False, tenant_id=None, multi_tenant=False)
    >>> first = keyed(context, "customers.create", "signup-1", email="ann@example.com")
    >>> again = keyed(context, "customers.create", "signup-1", email="ann@example.com")
    >>> first == again, first.ttl
    (True, datetime.timedelta(days=1))
    >>> keyed(context, "customers.create", None, email="ann@example.com") is None
    True
    >>> keyed(context, "customers.create", "", email="ann@example.com")
    Traceback (most recent call last):
    ...
    qzpay.errors.ValidationError: idempotency_key: must be a non-empty string
    """
    if key is None:
        return None
    checked = check.text(key, field="idempotency_key", max_length=MAX_KEY_LENGTH)
    return Keyed(
        operation=operation,
        key=checked,
        request_hash=request_hash(params),
        ttl=context.settings.idempotency_ttl,
    )


async def claim(uow: UnitOfWork, keyed: Keyed | None, kind: type[E]) -> Claim[E]:
    """Store the key in ``uow``'s transaction, or say what the first call with it left.

    Raises ``IdempotencyError`` (rule ``same_parameters``) for the key stored with other
    parameters. The stored key is rolled back with the transaction, so a call that fails
    after claiming leaves nothing behind.
    """
    if keyed is None:
        return _UNKEYED
    fresh = IdempotencyKey(
        id=new_id(),
        livemode=uow.scope.livemode,
        tenant_id=uow.scope.tenant_id,
        key=keyed.key,
        operation=keyed.operation,
        request_hash=keyed.request_hash,
        expires_at=uow.now + keyed.ttl,
        created_at=uow.now,
    )
    stored, inserted = await uow.tx.insert_or_get(fresh, on=("operation", "key"))
    keyed._remember(stored)
    if inserted:
        return Claim(keyed=keyed)
    if _expired(stored, uow.now):
        # A key past its ttl answers nothing any more: this call takes the row over.
        keyed._remember(
            await uow.tx.update(
                attrs.evolve(
                    stored,
                    request_hash=keyed.request_hash,
                    resource_id=None,
                    response=None,
                    expires_at=fresh.expires_at,
                )
            )
        )
        return Claim(keyed=keyed)
    return _found(stored, keyed, kind)


async def peek(uow: UnitOfWork, keyed: Keyed | None, kind: type[E]) -> Claim[E]:
    """What ``claim`` would find for the key, read without storing it (any transaction).

    For a call that must ask the provider before its writing transaction (attaching a
    card): a finished call's retry is then answered without a second provider call, and one
    with other parameters refused before it. The key is still claimed in the writing
    transaction, which alone decides.
    """
    if keyed is None:
        return _UNKEYED
    stored = await uow.tx.find(IdempotencyKey, operation=keyed.operation, key=keyed.key)
    if stored is None or _expired(stored, uow.now):
        return Claim(keyed=keyed)
    return _found(stored, keyed, kind)


async def bind(uow: UnitOfWork, keyed: Keyed | None, resource_id: UUID) -> None:
    """Tie the claimed key to the row a multi-step call made (its pending payment), so a
    retry that finds the key still in progress resumes that row."""
    if keyed is None:
        return
    row = await _claimed(uow, keyed)
    keyed._remember(await uow.tx.update(attrs.evolve(row, resource_id=resource_id)))


async def complete(uow: UnitOfWork, keyed: Keyed | None, result: Any) -> None:
    """Store ``result`` (an attrs domain value) as the key's answer, in ``uow``'s transaction.

    From then on the key replays an object equal to ``result``, also after a restart.
    """
    if keyed is None:
        return
    row = await _claimed(uow, keyed)
    resource_id = getattr(result, "id", None)
    keyed._remember(
        await uow.tx.update(
            attrs.evolve(
                row,
                response=snapshot(result),
                resource_id=resource_id if isinstance(resource_id, UUID) else row.resource_id,
            )
        )
    )


async def change(
    context: ServiceContext,
    kind: type[E],
    entity_id: UUID,
    changes: Mapping[str, Any],
    *,
    field: str,
    event: str,
    keyed: Keyed | None,
) -> E:
    """Apply ``changes`` to one entity, audit what really changed, emit ``event``; keyed
    calls claim and complete their key in the same transaction.

    A call that changes nothing writes nothing (no version bump, no audit row, no event),
    except that a keyed one still stores its key, so its retry replays the entity as it was
    then, not as a later call left it.
    """
    async with context.unit_of_work() as uow:
        found = await claim(uow, keyed, kind)
        if found.replay is not None:
            return found.replay
        found.raise_if_in_progress()
        current = await require(uow.tx, kind, entity_id, field=field)
        wanted = attrs.evolve(current, **changes, updated_at=uow.now)
        diff = check.changed(current, wanted, changes)
        result = current
        if diff:
            result = await uow.tx.update(wanted)
            await uow.record(event, result, changes=diff)
        await complete(uow, keyed, result)
    return result  # type: ignore[no-any-return]


# -- the parts ------------------------------------------------------------------------------


def _expired(row: IdempotencyKey, now: datetime) -> bool:
    return row.expires_at is not None and row.expires_at <= now


def _found(stored: IdempotencyKey, keyed: Keyed, kind: type[E]) -> Claim[E]:
    if stored.request_hash != keyed.request_hash:
        raise IdempotencyError(
            f"key {keyed.key!r} was already used for {keyed.operation} with other parameters; "
            "use a new key for a new request",
            field="idempotency_key",
            rule="same_parameters",
        )
    if stored.response is None:
        return Claim(resource_id=stored.resource_id, in_progress=True, keyed=keyed)
    return Claim(replay=restore(stored.response, kind), resource_id=stored.resource_id, keyed=keyed)


async def _claimed(uow: UnitOfWork, keyed: Keyed) -> IdempotencyKey:
    """The key's row: as this call last saw it, or read again (a call resumed elsewhere)."""
    if keyed._rows:
        return keyed._rows[0]
    stored = await uow.tx.find(IdempotencyKey, operation=keyed.operation, key=keyed.key)
    if stored is None:
        raise ValueError(f"idempotency key {keyed.key!r} of {keyed.operation} was never claimed")
    return stored


# -- the request hash ------------------------------------------------------------------------


def request_hash(params: Mapping[str, Any]) -> str:
    """A stable hash of a call's parameters: equal values hash alike whatever their form.

    UUIDs, Decimals (``Decimal("20")`` and ``Decimal("20.0")`` are one value), aware
    datetimes (in UTC), enums (by value), mappings (by sorted key) and sequences are
    normalized first; a parameter left ``UNSET`` (an update's "not given") is left out.

    >>> from decimal import Decimal
    >>> request_hash({"percent": Decimal("20")}) == request_hash({"percent": Decimal("20.00")})
    True
    >>> request_hash({"name": None}) == request_hash({})
    False
    """
    canonical = {
        name: _canonical(value) for name, value in params.items() if not isinstance(value, Unset)
    }
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _canonical(value: Any) -> Any:
    if value is None or type(value) in (str, int, bool):
        return value
    if isinstance(value, Enum):
        return _canonical(value.value)
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, Decimal):
        return {"decimal": format(value.normalize(), "f")}
    if isinstance(value, datetime):
        return {"datetime": value.isoformat() if value.tzinfo is None else _utc_text(value)}
    if isinstance(value, timedelta):
        return {"timedelta": [value.days, value.seconds, value.microseconds]}
    if isinstance(value, str | int):  # a subclass (not an enum): its plain value
        return str(value) if isinstance(value, str) else int(value)
    if isinstance(value, Mapping):
        return {str(name): _canonical(item) for name, item in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(item) for item in value]
    if isinstance(value, set | frozenset):
        return sorted((_canonical(item) for item in value), key=json.dumps)
    if attrs.has(type(value)):
        return {
            field.name: _canonical(getattr(value, field.name))
            for field in attrs.fields(type(value))
        }
    # A float has no exact value to compare (and money is never one): a programming error.
    raise TypeError(f"cannot hash a parameter of type {type(value).__name__}")


def _utc_text(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


# -- the snapshot codec ----------------------------------------------------------------------


def _snapshot_converter() -> cattrs.Converter:
    """Domain values to JSON-ready data and back: UUIDs, datetimes and Decimals as text,
    enums by value, read-only mappings as objects, tuples as arrays."""
    converter = cattrs.Converter()
    converter.register_unstructure_hook(UUID, str)
    converter.register_structure_hook(UUID, lambda value, _: UUID(value))
    converter.register_unstructure_hook(datetime, datetime.isoformat)
    converter.register_structure_hook(datetime, lambda value, _: datetime.fromisoformat(value))
    converter.register_unstructure_hook(Decimal, str)
    converter.register_structure_hook(Decimal, lambda value, _: Decimal(value))
    return converter


_SNAPSHOTS = _snapshot_converter()


def snapshot(result: Any) -> dict[str, Any]:
    """``result`` as JSON-ready data, to be stored in ``IdempotencyKey.response``."""
    data = _SNAPSHOTS.unstructure(result)
    if not isinstance(data, dict):
        raise TypeError(f"cannot store a {type(result).__name__} as an idempotent result")
    return data


def restore(data: Mapping[str, Any], kind: type[E]) -> E:
    """The ``kind`` value a snapshot was taken of, equal to it field by field."""
    return _SNAPSHOTS.structure(dict(data), kind)
