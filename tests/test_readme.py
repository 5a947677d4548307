"""The README's quick start runs as written, so it can never rot."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def quick_start() -> str:
    """The first ```python block under the "## Quick start" heading."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"^```python\n(.*?)^```$", section, flags=re.DOTALL | re.MULTILINE)
    assert found is not None, "README.md's Quick start has no ```python block"
    return found.group(1)


def test_the_quick_start_runs_as_written(tmp_path: Path) -> None:
    script = tmp_path / "quick_start.py"
    script.write_text(quick_start(), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    status, _, until = done.stdout.strip().partition(" until ")
    assert status == "trialing"
    # The trial ends 14 days from the wall clock's now (which may pass midnight meanwhile).
    today = datetime.now(UTC).date()
    assert until in {str(today + timedelta(days=14)), str(today + timedelta(days=13))}
    assert (tmp_path / "billing.db").exists()


def test_the_quick_start_is_about_twenty_lines() -> None:
    assert len(quick_start().splitlines()) <= 25
