"""docs/examples/child_patterns.py runs and prints what docs/children.md promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).parent.parent / "docs" / "examples" / "child_patterns.py"


def test_child_patterns_example_runs() -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert "hook batch         {'a': 'A', 'b': 'B', 'c': 'C'}" in out
    assert "{'ok': ['A', 'C'], 'failed': ['bad-b']}" in out
    assert "chunked fan-out    120" in out
    assert "abandoned child  completed" in out
    assert "argument order     ['a', 'b', 'c', 'd']" in out
    assert "cancelled child  cancelled" in out
    assert "signal a child     42" in out
