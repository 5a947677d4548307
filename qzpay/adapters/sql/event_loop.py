"""SQL adapters run on asyncio only, because their drivers do (aiosqlite, asyncpg)."""

from __future__ import annotations

import asyncio

from qzpay.errors import ConfigurationError


def require_asyncio(adapter: str) -> None:
    """SQL drivers run on asyncio only: say so plainly instead of failing deep inside."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise ConfigurationError(
            f"{adapter} needs asyncio (its driver does); on trio use MemoryStorage"
        ) from None
