"""A transaction's buffered writes, grouped so that alike writes can go as one statement.

A renewal batch buffers thousands of writes: per renewal an invoice, a line, a payment, a
link, an audit row and a subscription update. Sent one statement per write, that is
thousands of statements; grouped per (table, operation), it is six multi-row statements
(``unnest`` on PostgreSQL, ``executemany`` on SQLite). Grouping moves a write ahead of
writes buffered before it, which is only safe where no order between them can be seen:

- **Runs.** A write to a row that an earlier write of the run touched (insert then update,
  update then soft delete) starts a new run. PostgreSQL sends a run as one statement of
  data-modifying CTEs, which all see the snapshot from before the statement, not each
  other's rows; and one multi-row UPDATE cannot update a row twice.
- **One table keeps its order of operations.** A write joins the group of its statement
  only if no later group writes the same table: the UPDATE that unsets the old default
  payment method stays ahead of the INSERT of the new default (a partial unique index).
- **References stay behind their rows.** A write that references (``spec.references``) a
  row inserted by a later group of the run starts a new group, so a statement boundary
  never falls between a row and a row pointing at it in the wrong order.
- **Unique keys are per table**, so moving a write ahead of another table's writes never
  changes which of two rows holds a key first. Within one multi-row UPDATE the order is
  the database's: PostgreSQL's batches send such a statement optimistically and again row
  by row if it broke a key (``postgres_batches.reorders_keys``); SQLite's ``executemany``
  runs its rows in order.
- Groups keep the order in which they first appeared; writes keep their order inside a
  group. A write whose ``operation`` is unknown gets a group of its own, and nothing
  buffered after it is moved ahead of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qzpay.adapters.sql.transaction import Write

Group = list[Write]
"""Writes of one statement shape (so of one table and operation), in buffer order."""
Run = list[Group]
"""Groups that may share one PostgreSQL statement, in the order they must run."""


def group_writes(writes: Sequence[Write]) -> list[Run]:
    """The writes as runs of groups; see the module docstring for the rules."""
    runs: list[Run] = []
    groups: Run = []
    touched: set[tuple[str, Any]] = set()
    # Group index by statement; keyed by id(): Compiled statements are cached objects, and
    # the writes hold them alive for as long as this function runs.
    joinable: dict[int, int] = {}
    latest: dict[str, int] = {}  # table -> index of the last group that writes it
    inserted: dict[Any, int] = {}  # encoded id of a row inserted in this run -> its group
    for write in writes:
        spec = write.spec
        row = (spec.table, write.entity_id)
        if row in touched:
            runs.append(groups)
            groups, touched, joinable, latest, inserted = [], set(), {}, {}, {}
        touched.add(row)
        target = joinable.get(id(write.statement)) if _joins(write) else None
        if target is not None:
            if latest[spec.table] != target:
                target = None
            elif inserted and target != len(groups) - 1:  # no group after the last one
                params = write.params
                for column in spec.references:
                    at = inserted.get(params.get(column))
                    if at is not None and at > target:
                        target = None
                        break
        if target is None:
            target = len(groups)
            groups.append([write])
            if write.operation is None:
                joinable.clear()  # nothing buffered later moves ahead of it
            else:
                joinable[id(write.statement)] = target
        else:
            groups[target].append(write)
        latest[spec.table] = target
        if write.operation == "insert":
            inserted[write.params["id"]] = target
    if groups:
        runs.append(groups)
    return runs


def _joins(write: Write) -> bool:
    """Whether ``write`` may join an earlier write's multi-row statement."""
    return write.operation is not None


__all__ = ["Group", "Run", "group_writes"]
