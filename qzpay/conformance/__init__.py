"""The storage conformance suite: the properties of DESIGN §5 that every storage adapter honors.

An adapter author writes a factory and points the suite at it::

    from qzpay.conformance import Capabilities, StoreHandle, StoreOptions

    def make_store(options: StoreOptions) -> StoreHandle:
        storage = MyStorage(
            dsn_for(options.test_id),              # same test_id → same database
            table_prefix=options.table_prefix,     # passed through unchanged
            multi_tenant=options.multi_tenant,
        )
        return StoreHandle(
            storage=storage,                       # not opened: the suite opens and closes it
            raw_url=sqlalchemy_url_for(options.test_id),  # None if no SQL database behind it
            cleanup=drop_test_database,            # optional coroutine function, run after the test
            capabilities=Capabilities(multiple_connections=True),  # or "<why not>"
        )

then installs the suite's runner (``pip install 'qzpay[conformance]'``: pytest) and runs
``qzpay conformance mypkg.store:make_store`` or, from their own pytest run,
``pytest -p qzpay_conformance --qzpay-store mypkg.store:make_store``. The factory may be
an ``async def``. Before any test, one store from the factory is opened: if it cannot be
(the database is down), the run stops with one line that says why. See
``docs/adapter-authors.md`` for the whole contract.

The factory contract:

- ``make_store(options: StoreOptions) -> StoreHandle | Awaitable[StoreHandle]``, called once
  per store a test needs, possibly several times in one test: with different prefixes (two
  stores on ONE database), with the same prefix (several store instances sharing rows, for
  concurrency across connections), single- and multi-tenant.
- ``StoreOptions``: ``table_prefix``, ``multi_tenant``, ``livemode`` (the side the test mostly
  uses; a store serves both), ``test_id`` (unique per test: the unit of isolation).
- ``StoreHandle``: ``storage`` (a ``StoragePort``, not opened), ``raw_url`` (a SQLAlchemy URL
  the suite opens read-only to check what landed, or ``None``), ``cleanup`` (an optional
  coroutine function) and ``capabilities``.
- ``Capabilities`` declares OPTIONAL extras only (``multiple_connections``: ``True`` or the
  reason it is not supported). Prefixes, tenancy, livemode and soft deletes are mandatory:
  declaring them unsupported raises ``ConfigurationError``.

One module per property, each a group in the report, as listed in ``PROPERTIES``
(``prefixes``, ``tenancy``, ``livemode``, ``soft_deletes``, ...).
"""

from qzpay.conformance.contract import (
    MANDATORY,
    Capabilities,
    StoreFactory,
    StoreHandle,
    StoreOptions,
)
from qzpay.conformance.report import PROPERTIES
from qzpay.conformance.runner import run

__all__ = [
    "MANDATORY",
    "PROPERTIES",
    "Capabilities",
    "StoreFactory",
    "StoreHandle",
    "StoreOptions",
    "run",
]
