"""JSON Lines input: every reader of a ``.jsonl`` file skips blank lines and names the file and line of one
that is not JSON (one rule for question files and dataset splits alike)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def json_lines(lines: Iterable[str], path: Path, error: type[Exception]) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed value)`` for each non-blank line of ``path`` (read as ``lines``); a line that is
    not JSON raises ``error("<path>:<line>: not JSON (<reason>)")``."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(f"{path}:{number}: not JSON ({exc.msg})") from exc
