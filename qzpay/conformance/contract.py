"""What an adapter author hands the conformance suite: a factory of stores, and what it makes.

The suite calls the author's factory ``make_store(options)`` once for every store a test
needs, and may call it several times in one test: with another ``table_prefix`` (two
prefixes on ONE database), with the same prefix (several store instances, i.e. several
connections, on one database), with ``multi_tenant`` on or off. Calls with the same
``test_id`` must reach the same database; calls with different ``test_id`` values must not
see each other's rows (that is how tests are isolated: a file, a schema, a database or a
prefix per ``test_id``, as the author prefers).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import os
import sys
import uuid
from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import ClassVar, TypeAlias

import attrs

from qzpay.contracts.storage import StoragePort
from qzpay.errors import ConfigurationError, QZPayError, StorageError

MANDATORY: tuple[str, ...] = ("prefixes", "tenancy", "livemode", "soft_deletes")
"""Properties every storage adapter must honor; none may be declared unsupported."""

_MANDATORY_SPELLINGS = frozenset(
    {
        *MANDATORY,
        "prefix",
        "table_prefix",
        "table_prefixes",
        "multi_tenant",
        "tenants",
        "livemode_isolation",
        "soft_delete",
        "include_deleted",
    }
)


@attrs.frozen(kw_only=True)
class StoreOptions:
    """What the suite asks the factory for.

    - ``table_prefix``: pass it to the store unchanged. The suite also sends hostile prefixes
      (``"Billing_"``, ``"x; DROP TABLE ..."``) and expects the store, or the factory by
      building the store, to refuse them with ``qzpay.ValidationError``. A factory may map a
      valid prefix to another valid one for isolation (our Postgres factory does), as long
      as the store's ``table_prefix`` reports the prefix its tables really carry.
    - ``multi_tenant``: the store's tenancy mode.
    - ``livemode``: the side of the livemode wall the test will mostly use; a store serves
      both (the scope of each transaction says which), so most factories ignore it.
    - ``test_id``: unique per test (lower-case letters, digits and underscores, at most 64
      characters). Same ``test_id`` → same database; different → isolated.
    """

    table_prefix: str = "billing_"
    multi_tenant: bool = False
    livemode: bool = False
    test_id: str


def _check_multiple_connections(
    instance: object, attribute: attrs.Attribute[bool | str], value: bool | str
) -> None:
    if value is True:
        return
    if isinstance(value, str) and value.strip():
        return
    raise ConfigurationError(
        "Capabilities.multiple_connections must be True or a non-empty string saying why "
        f"several store instances on one database are not supported (got {value!r})"
    )


@attrs.frozen(init=False)
class Capabilities:
    """The OPTIONAL extras an adapter supports; everything else is mandatory.

    Each capability is ``True`` (supported: the suite tests it) or a string with the reason
    it is not, which the report shows as ``not supported: <reason>``. There is no ``False``:
    an unsupported extra always says why.

    - ``multiple_connections``: several store instances (made by calling the factory again
      with the same ``test_id`` and prefix) may work on one database at once, and the atomic
      operations stay correct across them (on a server database: several connections).

    Prefixes, tenancy, livemode and soft deletes cannot be declared unsupported: trying
    raises ``ConfigurationError``.

    >>> Capabilities(multiple_connections="one process only")
    Capabilities(multiple_connections='one process only')
    >>> Capabilities(tenancy=False)
    Traceback (most recent call last):
    ...
    qzpay.errors.ConfigurationError: tenancy cannot be declared unsupported: ...
    """

    OPTIONAL: ClassVar[tuple[str, ...]] = ("multiple_connections",)

    multiple_connections: bool | str = attrs.field(validator=_check_multiple_connections)

    def __init__(self, **declared: bool | str) -> None:
        for name in declared:
            if name in _MANDATORY_SPELLINGS:
                raise ConfigurationError(
                    f"{name} cannot be declared unsupported: prefixes, tenancy, livemode and "
                    "soft deletes are mandatory for every storage adapter (DESIGN §5); "
                    f"remove {name!r} from Capabilities(...) and implement it"
                )
            if name not in self.OPTIONAL:
                raise ConfigurationError(
                    f"{name!r} is not a capability the conformance suite knows; the optional "
                    f"ones are: {', '.join(self.OPTIONAL)}"
                )
        self.__attrs_init__(multiple_connections=declared.get("multiple_connections", True))

    def not_supported(self, name: str) -> str | None:
        """The reason ``name`` is not supported, or ``None`` when it is."""
        value = getattr(self, name)
        return value if isinstance(value, str) else None


def _to_capabilities(value: object) -> Capabilities:
    if isinstance(value, Capabilities):
        return value
    if isinstance(value, dict):
        return Capabilities(**value)
    raise ConfigurationError(
        f"StoreHandle.capabilities must be a qzpay.conformance.Capabilities, not {value!r}"
    )


def _check_storage(
    instance: object, attribute: attrs.Attribute[StoragePort], value: StoragePort
) -> None:
    if not isinstance(value, StoragePort):
        raise ConfigurationError(
            f"StoreHandle.storage must implement qzpay.contracts.storage.StoragePort "
            f"(table_prefix, multi_tenant, open, close, transaction); got {type(value).__name__}"
        )


@attrs.define(kw_only=True)
class StoreHandle:
    """What the factory returns for one store.

    - ``storage``: the store, NOT yet opened; the suite opens and closes it.
    - ``raw_url``: for a SQL-backed store, a SQLAlchemy URL of the same database, which the
      suite opens read-only (``sqlite:///...`` or ``postgresql://...``; it picks the async
      driver, aiosqlite or asyncpg) to check what really landed: table names under the
      prefix, ``tenant_id`` and ``livemode`` columns, soft-deleted rows still there.
      ``None`` for a store with no SQL database behind it.
    - ``cleanup``: an optional coroutine function the suite awaits after the test, once
      every store of the test is closed (drop what the test created).
    - ``capabilities``: the optional extras this store supports.
    """

    storage: StoragePort = attrs.field(validator=_check_storage)
    raw_url: str | None = None
    cleanup: Callable[[], Awaitable[None]] | None = None
    capabilities: Capabilities = attrs.field(factory=Capabilities, converter=_to_capabilities)


StoreFactory: TypeAlias = Callable[[StoreOptions], StoreHandle | Awaitable[StoreHandle]]
"""``make_store(options) -> StoreHandle`` (a plain or an async function)."""


def load_factory(spec: str) -> StoreFactory:
    """The factory named by ``"package.module:function"``, or a clear ``ConfigurationError``.

    The module is imported as installed or, failing that, from the current directory (as
    ``python -m`` would), so ``qzpay conformance mypkg.store:make_store`` works from the root
    of a project that is not installed.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigurationError(
            f"{spec!r} is not MODULE:FACTORY (for example mypkg.store:make_store)"
        )
    try:
        module = _import(module_name)
    except ImportError as error:
        raise ConfigurationError(f"cannot import {module_name!r}: {error}") from error
    target: object = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigurationError(f"{module_name!r} has no {attribute!r}") from None
    if not callable(target):
        raise ConfigurationError(f"{spec} is not callable")
    factory: StoreFactory = target
    return factory


def _import(module_name: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        here = os.getcwd()
        top = module_name.partition(".")[0]
        if error.name != top or here in sys.path:
            raise
        sys.path.insert(0, here)
        return importlib.import_module(module_name)


async def make_handle(factory: StoreFactory, options: StoreOptions) -> StoreHandle:
    """Call the factory (plain or async) and check that it returned a ``StoreHandle``."""
    made: object = factory(options)
    if inspect.isawaitable(made):
        made = await made
    if not isinstance(made, StoreHandle):
        raise ConfigurationError(
            "the store factory must return a qzpay.conformance.StoreHandle "
            f"(storage, raw_url, cleanup, capabilities), not {type(made).__name__}"
        )
    return made


def preflight(spec: str, factory: StoreFactory) -> str | None:
    """``None`` if one store from ``factory`` opens and closes; else the one line to print.

    Every test of the suite opens stores the same way, so a store that cannot open (the
    database is down, the schema is missing) would fail every test alike, in thousands of
    lines. Opening one first turns that into one line that says why. A factory that breaks
    the contract (a wrong return type, a mandatory property declared unsupported) is not
    caught here: the suite reports it, test by test, in the property it concerns.
    """
    try:
        asyncio.run(_open_one_store(factory))
    except _CannotOpen as error:
        cause = error.__cause__ or error
        message = " ".join(str(cause).split()) or type(cause).__name__
        return f"qzpay conformance: cannot open the store from {spec}: {message}"
    return None


class _CannotOpen(Exception):
    pass


async def _open_one_store(factory: StoreFactory) -> None:
    options = StoreOptions(test_id=f"preflight_{uuid.uuid4().hex[:12]}")
    try:
        handle = await make_handle(factory, options)
    except (StorageError, OSError) as error:
        raise _CannotOpen from error
    except Exception:
        return  # a broken contract or a bug: the suite's tests say which, where it matters
    try:
        try:
            await handle.storage.open()
        except (QZPayError, OSError) as error:
            raise _CannotOpen from error
        await handle.storage.close()
    except BaseException:
        if handle.cleanup is not None:
            with contextlib.suppress(Exception):  # what failed first is what matters
                await handle.cleanup()
        raise
    if handle.cleanup is not None:
        try:
            await handle.cleanup()
        except (QZPayError, OSError) as error:
            raise _CannotOpen(f"the store opened, but its cleanup failed: {error}") from None
