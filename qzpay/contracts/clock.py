"""The Clock port: the only source of "now" in qzpay."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """Tells the current moment as a timezone-aware UTC datetime.

    Everything time-dependent (trials, periods, due jobs, webhook tolerances) asks this port,
    so tests and demos can travel in time the way Stripe's test clocks do.
    """

    def now(self) -> datetime: ...
