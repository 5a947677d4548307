"""Functions written out as source once per entity kind, for the paths every row takes.

A loop over a kind's fields costs more than the work per field (a check, a copy, a hook
call), so storage builds straight-line code per kind instead: ``check_values``,
``at_version`` (``qzpay.adapters.storage_rules``) and the row readers of
``qzpay.adapters.sql.rows``. The source is qzpay's own, made from field names the domain
registry declares; nothing of a caller's reaches it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def function(name: str, lines: Sequence[str], names: Mapping[str, Any], *, label: str) -> Any:
    """Compile ``lines`` (the source of ``def name(...)``) with ``names`` as its globals and
    return the function; ``label`` names it in tracebacks and profiles.

    >>> double = function("double", ["def double(x):", "    return factor * x"],
    ...                   {"factor": 2}, label="example")
    >>> double(21)
    42
    """
    scope = dict(names)
    exec(compile("\n".join(lines) + "\n", f"<{label}>", "exec"), scope)
    return scope[name]
