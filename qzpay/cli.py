"""The ``qzpay`` command: ``demo``, ``migrate`` and ``conformance``.

Exit codes: 0 done, 1 qzpay refused (the error's code and message go to stderr, never a
traceback), 2 the command line asked for something that cannot be done.

    qzpay --version
    qzpay demo [--db PATH] [--json]
    qzpay migrate --url sqlite:///billing.db [--prefix billing_] [--multi-tenant]
    qzpay conformance MODULE:FACTORY [--report json] [--report-file PATH] [-- PYTEST_ARGS]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.metadata
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from qzpay import demo
from qzpay.adapters.clock import FrozenClock
from qzpay.adapters.fake import FakeProvider
from qzpay.adapters.sql.migrations import LATEST_VERSION
from qzpay.adapters.sqlite import SQLiteStorage
from qzpay.bootstrap import create_billing
from qzpay.errors import ConfigurationError, QZPayError, ValidationError

POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+asyncpg")
SQLITE_SCHEMES = ("sqlite", "sqlite+aiosqlite")


class UsageError(Exception):
    """The command line asks for something that cannot be done here (exit 2)."""


def main(argv: list[str] | None = None) -> int:
    """Run ``qzpay`` with ``argv`` (default: ``sys.argv[1:]``) and return its exit code."""
    parser = _parser()
    argv = sys.argv[1:] if argv is None else argv
    # What follows `--` belongs to pytest (argparse mishandles `--` after a subcommand).
    passed_on: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, passed_on = argv[:cut], argv[cut + 1 :]
    try:
        args = parser.parse_args(argv)
        if passed_on and args.command is not _conformance:
            parser.error("only `qzpay conformance` takes arguments after --")
        args.pytest_args = passed_on
    except SystemExit as stop:  # argparse has printed the usage or the help already
        return stop.code if isinstance(stop.code, int) else 2
    command: Callable[[argparse.Namespace], int] = args.command
    try:
        return command(args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except QZPayError as error:
        _report(error)
        return 1
    except ExceptionGroup as group:  # a task group may wrap qzpay's errors
        matched, rest = group.split(QZPayError)
        if matched is None or rest is not None:
            raise
        for leaf in _leaves(matched):
            _report(leaf)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qzpay", description="qzpay: async billing in your own database."
    )
    parser.add_argument("--version", action="version", version=f"qzpay {_version()}")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    run_demo = commands.add_parser(
        "demo",
        help="run a subscription's first month on SQLite with a fake provider and frozen clock",
    )
    run_demo.add_argument(
        "--db", type=Path, metavar="PATH", help="SQLite file to use (default: a temporary one)"
    )
    run_demo.add_argument("--json", action="store_true", help="print each step as a JSON line")
    run_demo.set_defaults(command=_demo)

    migrate = commands.add_parser("migrate", help="create or upgrade the qzpay schema")
    migrate.add_argument(
        "--url",
        required=True,
        help="sqlite:///path/to/billing.db or postgresql://user@host:5432/db",
    )
    migrate.add_argument("--prefix", default="billing_", help="table prefix (default: billing_)")
    migrate.add_argument(
        "--multi-tenant", action="store_true", help="give every tenant-owned table a tenant_id"
    )
    migrate.set_defaults(command=_migrate)

    conformance = commands.add_parser(
        "conformance", help="run the storage conformance suite against an adapter"
    )
    conformance.add_argument("factory", metavar="MODULE:FACTORY")
    conformance.add_argument(
        "--report", choices=["json"], help="also write the verdict per property as a file"
    )
    conformance.add_argument(
        "--report-file", metavar="PATH", help="where --report writes (conformance-report.json)"
    )
    conformance.set_defaults(pytest_args=[])  # what follows `--`, given to pytest as it is
    conformance.set_defaults(command=_conformance)
    return parser


def _version() -> str:
    try:
        return importlib.metadata.version("qzpay")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "(not installed)"


# -- demo --------------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    def emit(step: demo.Step) -> None:
        print(step.as_json() if args.json else step.text, flush=True)

    if args.db is not None:
        path = _sqlite_file(args.db, option="--db")
        if path.exists() and path.stat().st_size > 0:
            # The fake provider starts afresh each run, so its ids would collide with the
            # ones the last run stored: the story needs a new file.
            raise UsageError(f"--db: {path} already exists; the demo needs a new file")
        asyncio.run(_run_demo(path, emit, temporary=False))
        return 0
    with tempfile.TemporaryDirectory(prefix="qzpay-demo-") as directory:
        asyncio.run(_run_demo(Path(directory) / "billing.db", emit, temporary=True))
    return 0


async def _run_demo(path: Path, emit: demo.Emit, *, temporary: bool) -> None:
    clock = FrozenClock(demo.START)
    billing = create_billing(storage=SQLiteStorage(path), provider=FakeProvider(), clock=clock)
    async with billing:
        where = "a temporary SQLite database (--db PATH keeps one)" if temporary else path
        emit(
            demo.Step(
                name="opened",
                text=f"Opened {where} with the fake payment provider",
                data={"database": str(path), "temporary": temporary},
            )
        )
        await demo.run(billing, travel=clock.advance, emit=emit)


# -- migrate -----------------------------------------------------------------------------


def _migrate(args: argparse.Namespace) -> int:
    scheme = args.url.partition("://")[0].lower() if "://" in args.url else ""
    if scheme not in (*SQLITE_SCHEMES, *POSTGRES_SCHEMES):
        raise UsageError(
            f"--url: unsupported scheme {scheme or '(none)'!r}: "
            "use sqlite:///path/to/billing.db or postgresql://user@host:5432/db"
        )
    try:
        print(asyncio.run(_run_migrate(args.url, args.prefix, args.multi_tenant, scheme)))
    except ValidationError as error:
        option = _OPTIONS.get(error.field or "")
        if option is None:
            raise
        raise ValidationError(error.message, field=option, rule=error.rule) from None
    except ConfigurationError as error:
        if error.rule != "tenancy":
            raise
        flag = "drop" if args.multi_tenant else "add"
        raise ConfigurationError(
            f"{error.message} (qzpay migrate never changes tenancy: {flag} --multi-tenant "
            "to migrate this schema as it is)",
            rule=error.rule,
        ) from None
    return 0


# The storages name their parameters; the command line's user typed these options.
_OPTIONS = {"table_prefix": "--prefix", "path_or_url": "--url", "dsn": "--url"}


async def _run_migrate(url: str, prefix: str, multi_tenant: bool, scheme: str) -> str:
    """Migrate without opening the store for use: a closed store migrates on a connection
    of its own, and on SQLite leaves no ``-wal``/``-shm`` files behind."""
    storage: Any
    if scheme in SQLITE_SCHEMES:
        storage = SQLiteStorage(url, table_prefix=prefix, multi_tenant=multi_tenant)
        if storage.path != ":memory:":
            _sqlite_file(Path(storage.path), option="--url")
        where = storage.path
    else:
        storage = _postgres_module().PostgresStorage(
            url, table_prefix=prefix, multi_tenant=multi_tenant
        )
        where = _without_password(url)
    applied: list[int] = await storage.migrate()
    where = f"{where} ({_layout(storage.table_prefix, multi_tenant)})"
    if not applied:
        return (
            f"The qzpay schema in {where} is up to date (version {LATEST_VERSION}): nothing to do"
        )
    if applied[0] == 1:  # only a new schema gets version 1
        return f"Created the qzpay schema, version {applied[-1]}, in {where}"
    return f"Upgraded the qzpay schema in {where} from version {applied[0] - 1} to {applied[-1]}"


def _postgres_module() -> Any:
    try:
        # Imported by name: the core must not depend on the optional postgres adapter.
        return importlib.import_module("qzpay.adapters.postgres")
    except ModuleNotFoundError as error:
        if error.name == "qzpay.adapters.postgres":
            raise UsageError("PostgreSQL support arrives with the postgres adapter") from None
        if error.name == "asyncpg":
            raise UsageError(
                "PostgreSQL needs the postgres extra: pip install 'qzpay[postgres]'"
            ) from None
        raise


def _layout(prefix: str, multi_tenant: bool) -> str:
    return f"prefix {prefix}, {'multi' if multi_tenant else 'single'}-tenant"


def _without_password(url: str) -> str:
    """``url`` fit to print: a password in it becomes ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


# -- conformance -------------------------------------------------------------------------


def _conformance(args: argparse.Namespace) -> int:
    # Imported here: pytest is only needed by those who run the suite.
    from qzpay.conformance.runner import run

    if ":" not in args.factory:
        raise UsageError(f"expected MODULE:FACTORY, got {args.factory!r}")
    return run(args.factory, args.report, args.report_file, args.pytest_args)


# -- helpers -----------------------------------------------------------------------------


def _sqlite_file(path: Path, *, option: str) -> Path:
    """Refuse a path SQLite could not create, before anything tries to open it."""
    if path.is_dir():
        raise UsageError(f"{option}: {path} is a directory; give a file path")
    if not path.parent.is_dir():
        raise UsageError(f"{option}: directory {path.parent} does not exist")
    return path


def _report(error: QZPayError) -> None:
    print(f"error: {error.code}: {error}", file=sys.stderr)


def _leaves(group: BaseExceptionGroup[QZPayError]) -> list[QZPayError]:
    errors: list[QZPayError] = []
    for error in group.exceptions:
        errors.extend(_leaves(error) if isinstance(error, BaseExceptionGroup) else [error])
    return errors


if __name__ == "__main__":
    sys.exit(main())
