"""Every example in the user guides runs as written, so the guides can never rot.

Each ```python block of ``docs/guide/*.md`` is a whole script (it asserts what the text
around it says); each runs in a fresh interpreter, as a reader would run it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

GUIDES = Path(__file__).resolve().parent.parent / "docs" / "guide"
_BLOCK = re.compile(r"^```python\n(.*?)^```$", flags=re.DOTALL | re.MULTILINE)


def examples() -> list[tuple[str, str]]:
    found = []
    for guide in sorted(GUIDES.glob("*.md")):
        for number, block in enumerate(_BLOCK.findall(guide.read_text(encoding="utf-8")), 1):
            found.append((f"{guide.stem}-{number}", block))
    return found


def test_there_are_guides_with_examples() -> None:
    assert len(examples()) >= 5


@pytest.mark.parametrize(("name", "code"), examples(), ids=[name for name, _ in examples()])
def test_the_example_runs_as_written(name: str, code: str, tmp_path: Path) -> None:
    script = tmp_path / f"{name}.py"
    script.write_text(code, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
