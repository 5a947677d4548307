"""PostgreSQL: a transaction's buffered writes as few statements as possible, each bounded.

DESIGN §11 and docs/decisions/0008-postgres-unit-of-work.md. The writes are grouped by
``write_groups`` (runs of groups of one statement shape). Each group of more than one row
becomes one multi-row statement over ``unnest`` of one array per column, derived from the
very single-row statement the group would otherwise run, so both ways write the same rows:

- ``INSERT INTO t (a, b) VALUES ($1::UUID, $2::JSONB)`` becomes
  ``INSERT INTO t (a, b) SELECT u.c1::UUID, u.c2::JSONB FROM unnest($1::UUID[], $2::TEXT[])
  AS u(c1, c2)`` (JSON goes as text and is cast, as asyncpg sends it for one row);
- ``UPDATE t SET ... WHERE t.id = $27::UUID AND t.livemode = $28::BOOLEAN AND t.version =
  $29::BIGINT`` becomes ``UPDATE t SET ... FROM unnest(...) AS u(...) WHERE t.id = u.c27
  AND t.livemode = $28 AND t.version = u.c29 RETURNING t.id``: the version check per row,
  the scope (the same for every row of a transaction) as one value. Updates of a kind
  with a unique key go the same way, optimistically: the batch is marked ``reorders_keys``
  and sent after a savepoint, and if the multi-row UPDATE breaks a unique key, the
  transaction rolls back to the savepoint and sends those writes one row per part, in
  their order (``plan(..., in_order=True)``; see ``reorders_keys``).

The statements of a run are sent together as data-modifying CTEs, ``WITH w0 AS (...), w1
AS (...) SELECT ...``, one output column per CTE, read in order so that the CTEs run in
the order of their groups: a row count for plain parts, and for a checked multi-row UPDATE
the ids it should have hit and did not (``NULL`` when none), which names the stale or
missing row without another round trip. Nothing is unbounded: a part holds at most
``CHUNK_ROWS`` rows and a statement at most ``CHUNK_ROWS`` rows and ``MAX_PARTS`` parts, so
parameters stay far below PostgreSQL's 32,767 and result columns below its 1,664 however
many writes a transaction buffers. The multi-row text does not depend on the row count, so
the shapes are few; the combined texts are kept in an LRU of ``SHAPE_CACHE`` entries (and
asyncpg's own prepared-statement cache is an LRU as well).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, NamedTuple

import attrs

from qzpay.adapters.sql.statements import Compiled, values_of
from qzpay.adapters.sql.transaction import Write
from qzpay.adapters.sql.write_groups import group_writes

CHUNK_ROWS = 1000
"""Rows per multi-row part and per statement: bounds one message and the server's work."""
MAX_PARTS = 32
"""CTEs per statement (a run of many single-row groups)."""
SHAPE_CACHE = 256
"""Combined statement texts kept, least recently used dropped first."""
SMALL = 8
"""Up to this many writes, a transaction is checked for the shortcut in ``plan``."""

SCOPE_BINDS = frozenset({"s_livemode", "s_tenant_id"})
"""Binds that are the same for every write of a transaction: sent once, not as an array."""

_PLACEHOLDER = re.compile(r"\$(\d+)")
# A bind as SQLAlchemy's asyncpg dialect renders it: ``$n::TYPE``, where TYPE may be several
# words (``TIMESTAMP WITH TIME ZONE``) and carry a modifier (``NUMERIC(12, 2)``).
_BIND = re.compile(
    r"\$(\d+)(?:::([A-Z][A-Z0-9_]*(?: (?:WITH|WITHOUT|TIME|ZONE|PRECISION|VARYING))*"
    r"(?:\(\d+(?:, ?\d+)*\))?))?"
)
_INSERT = re.compile(r"(INSERT INTO \S+ \([^)]*\)) VALUES \((.*)\)", re.DOTALL)
_UPDATE = re.compile(r"(UPDATE (\S+) SET .*?) WHERE (.*)", re.DOTALL)
_JSON_TYPES = frozenset({"JSON", "JSONB"})


def renumber(sql: str, offset: int) -> str:
    """Move ``$n`` placeholders up by ``offset``, to append one statement's args to another's."""
    if not offset:
        return sql
    return _PLACEHOLDER.sub(lambda match: f"${int(match.group(1)) + offset}", sql)


@attrs.frozen
class MultiRow:
    """A single-row statement turned into its ``unnest`` form (see the module docstring)."""

    sql: str
    """Numbered from ``$1``; ends before any RETURNING."""
    binds: tuple[str, ...]
    """The bind name of ``$1``, ``$2``...: arrays, except the scope binds."""
    arrays: tuple[bool, ...]
    returning: str
    """``1`` for an INSERT; the target's ``id`` for an UPDATE (checked per row)."""
    key: int | None
    """For an UPDATE, the number of the parameter that holds the row ids (``k_id``)."""
    key_type: str

    def args(self, writes: Sequence[Write]) -> list[Any]:
        """One tuple per array parameter (asyncpg takes any sequence), one value per scope
        parameter; transposed by ``zip`` rather than column by column in Python."""
        values = values_of(self.binds)
        columns = zip(*[values(write.params) for write in writes], strict=True)
        return [
            column if array else column[0]
            for column, array in zip(columns, self.arrays, strict=True)
        ]


def multi_row(statement: Compiled) -> MultiRow | None:
    """``statement`` in its ``unnest`` form, or ``None`` when its text is not one of the
    generic INSERT/UPDATE shapes (the group is then sent one row at a time)."""
    binds: list[str] = []
    casts: list[str] = []

    def replace(match: re.Match[str]) -> str:
        name = statement.names[int(match.group(1)) - 1]
        cast = match.group(2)
        if cast is None:
            raise ValueError("a bind without a type cast")
        if name not in binds:
            binds.append(name)
            casts.append(cast)
        number = binds.index(name) + 1
        return f"${number}::{cast}" if name in SCOPE_BINDS else f"u.c{number}::{cast}"

    try:
        body = _BIND.sub(replace, statement.sql)
    except (ValueError, IndexError):
        return None
    arrays = tuple(name not in SCOPE_BINDS for name in binds)
    sources = ", ".join(
        f"${n}::{'TEXT' if cast in _JSON_TYPES else cast}[]"
        for n, (cast, array) in enumerate(zip(casts, arrays, strict=True), 1)
        if array
    )
    alias = ", ".join(f"c{n}" for n, array in enumerate(arrays, 1) if array)
    source = f"unnest({sources}) AS u({alias})"
    if match := _INSERT.fullmatch(body):
        sql = f"{match.group(1)} SELECT {match.group(2)} FROM {source}"
        return MultiRow(sql, tuple(binds), arrays, "1", None, "")
    if (match := _UPDATE.fullmatch(body)) and "k_id" in binds and arrays[binds.index("k_id")]:
        key = binds.index("k_id")
        sql = f"{match.group(1)} FROM {source} WHERE {match.group(3)}"
        return MultiRow(sql, tuple(binds), arrays, f"{match.group(2)}.id", key + 1, casts[key])
    return None


def reorders_keys(write: Write) -> bool:
    """Whether a multi-row statement of ``write``'s group may break a unique key that its
    writes one after the other would not.

    One UPDATE checks unique indexes row by row in an order of its own choosing, so
    updates that hand a unique key from one row to another (unset the old default payment
    method, set the new one) may collide in one statement where one by one they do not.
    Nearly all such updates move no key (a renewal batch settling its payments and
    invoices), so they go as one statement, and the rare collision is sent again in order.
    Inserts collide whatever the order, and soft deletes only free keys.
    """
    return write.operation == "update" and bool(write.spec.unique)


class Part(NamedTuple):
    """Writes sent as one CTE (or as the whole statement): one row, or a multi-row chunk.

    Named tuples, not attrs classes: the small calls build a few per call, on the hot path.
    """

    writes: Sequence[Write]
    multi: MultiRow | None


class Batch(NamedTuple):
    """One statement to send: its text, its arguments and what each of its parts covers."""

    sql: str
    args: Sequence[Any]
    parts: Sequence[Part]
    plain: bool
    """One single-row write: sent as its own statement, its row count from the status."""
    checked: bool
    """Whether any part must hit its rows (a checked UPDATE or soft delete)."""
    multi_row: bool
    """Whether any part is a multi-row ``unnest`` statement."""
    reorders_keys: bool = False
    """Whether a multi-row part updates a kind with unique keys (``reorders_keys``): sent
    after a savepoint, and again in order if it breaks one."""

    def writes(self) -> list[Write]:
        """The batch's writes in the order they were planned."""
        return [write for part in self.parts for write in part.writes]

    def missed(self, results: Sequence[Any]) -> Write | None:
        """The first checked write that hit no row (stale version, missing row), if any."""
        if not self.checked:
            return None
        for part, result in zip(self.parts, results, strict=True):
            if part.multi is None:
                write = part.writes[0]
                if write.checked and result != 1:
                    return write
            elif part.multi.key is not None and result is not None:
                ids = {value.int for value in result}
                for write in part.writes:
                    if write.params["k_id"].int in ids:
                        return write
        return None


class PostgresBatches:
    """The statement texts for one store: multi-row forms per statement, combined per shape."""

    def __init__(self, *, shape_cache: int = SHAPE_CACHE) -> None:
        self._multi: dict[Compiled, MultiRow | None] = {}
        self._shapes: OrderedDict[tuple[tuple[Compiled, bool], ...], str] = OrderedDict()
        self._small: dict[tuple[Compiled, ...], str] = {}
        """Combined texts of single-row writes, by their statements (oldest dropped first)."""
        self._shape_cache = shape_cache

    @property
    def shapes(self) -> int:
        """How many combined texts are cached now (at most twice ``shape_cache``: the
        general shapes, and those of small calls of single-row writes)."""
        return len(self._shapes) + len(self._small)

    def plan(self, writes: Sequence[Write], *, in_order: bool = False) -> list[Batch]:
        """The statements that send ``writes``, in the order they must run; ``in_order``:
        updates of kinds with unique keys one row per part, in their order (the way back
        when a multi-row one broke a key)."""
        if len(writes) <= SMALL:
            # The common small call (customers.create: a customer and its audit row): each
            # write is its own group, so grouping would change nothing; skip its bookkeeping.
            small = self._single_rows(writes)
            if small is not None:
                return [small]
        batches: list[Batch] = []
        for run in group_writes(writes):
            parts: list[Part] = []
            rows = 0
            for group in run:
                for part in self._parts(group, in_order=in_order):
                    size = len(part.writes)
                    if parts and (rows + size > CHUNK_ROWS or len(parts) == MAX_PARTS):
                        batches.append(self._batch(parts))
                        parts, rows = [], 0
                    parts.append(part)
                    rows += size
            if parts:
                batches.append(self._batch(parts))
        return batches

    def _parts(self, group: Sequence[Write], *, in_order: bool) -> list[Part]:
        first = group[0]
        if len(group) == 1 or first.operation is None or (in_order and reorders_keys(first)):
            return [Part((write,), None) for write in group]
        statement = first.statement
        if statement in self._multi:
            multi = self._multi[statement]
        else:
            multi = self._multi[statement] = multi_row(statement)
        if multi is None:
            return [Part((write,), None) for write in group]
        return [
            Part(group[start : start + CHUNK_ROWS], multi)
            for start in range(0, len(group), CHUNK_ROWS)
        ]

    def _single_rows(self, writes: Sequence[Write]) -> Batch | None:
        """``_batch`` for writes that are one part each, in one pass (nearly every small
        call), the combined text cached by the statements alone; ``None`` when two writes
        share a statement or a row id (then grouping decides, in ``plan``)."""
        if len(writes) == 1:
            write = writes[0]
            statement = write.statement
            return Batch(
                statement.sql,
                statement.positional(write.params),
                [Part(writes, None)],
                True,
                write.checked,
                False,
            )
        parts: list[Part] = []
        statements: list[Compiled] = []
        seen: list[int] = []  # ids of the statements and the rows' ids: small ints compare fast
        args: list[Any] = []
        checked = False
        for write in writes:
            statement, row = write.statement, write.entity_id
            if row is None or id(statement) in seen or row.int in seen:
                return None
            seen += (id(statement), row.int)
            parts.append(Part((write,), None))
            statements.append(statement)
            args += statement.positional(write.params)
            checked = checked or write.checked
        shape = tuple(statements)
        sql = self._small.get(shape)
        if sql is None:
            sql = self._small[shape] = _text(parts)
            if len(self._small) > self._shape_cache:
                del self._small[next(iter(self._small))]
        return Batch(sql, args, parts, False, checked, False)

    def _batch(self, parts: list[Part]) -> Batch:
        checked = any(part.writes[0].checked for part in parts)
        if len(parts) == 1 and parts[0].multi is None:
            write = parts[0].writes[0]
            statement = write.statement
            return Batch(
                statement.sql, statement.positional(write.params), parts, True, checked, False
            )
        args: list[Any] = []
        for part in parts:
            if part.multi is None:
                write = part.writes[0]
                args.extend(write.statement.positional(write.params))
            else:
                args.extend(part.multi.args(part.writes))
        multi_row = any(part.multi is not None for part in parts)
        keys = any(part.multi is not None and reorders_keys(part.writes[0]) for part in parts)
        return Batch(self.combined(parts), args, parts, False, checked, multi_row, keys)

    def combined(self, parts: Sequence[Part]) -> str:
        """The parts as one statement of data-modifying CTEs, built once per shape."""
        shape = tuple((part.writes[0].statement, part.multi is not None) for part in parts)
        found = self._shapes.get(shape)
        if found is not None:
            self._shapes.move_to_end(shape)
            return found
        found = self._shapes[shape] = _text(parts)
        if len(self._shapes) > self._shape_cache:
            self._shapes.popitem(last=False)
        return found


def _text(parts: Sequence[Part]) -> str:
    """The statement of data-modifying CTEs for ``parts`` (``combined`` caches it)."""
    ctes, outputs, offset = [], [], 0
    for index, part in enumerate(parts):
        multi = part.multi
        if multi is None:
            statement = part.writes[0].statement
            ctes.append(f"w{index} AS ({renumber(statement.sql, offset)} RETURNING 1)")
            outputs.append(f"(SELECT count(*) FROM w{index})")
            offset += len(statement.names)
            continue
        ctes.append(f"w{index} AS ({renumber(multi.sql, offset)} RETURNING {multi.returning})")
        if multi.key is None:
            outputs.append(f"(SELECT count(*) FROM w{index})")
        else:
            keys = f"${multi.key + offset}::{multi.key_type}[]"
            outputs.append(
                f"(SELECT array_agg(m.k) FROM unnest({keys}) AS m(k)"
                f" WHERE m.k NOT IN (SELECT id FROM w{index}))"
            )
        offset += len(multi.binds)
    return f"WITH {', '.join(ctes)} SELECT {', '.join(outputs)}"


__all__ = ["CHUNK_ROWS", "MAX_PARTS", "SHAPE_CACHE", "Batch", "Part", "PostgresBatches"]
