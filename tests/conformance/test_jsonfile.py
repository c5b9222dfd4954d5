"""The example third-party backend ``docs/examples/plait-jsonfile`` passes the conformance suite
and the end-to-end suite, run as a backend author would: in a fresh pytest process, with the
backend found only through its ``plait`` entry point.

``scripts/dev.py test`` installs the package (and requires it through ``PLAIT_REQUIRE_BACKENDS``);
elsewhere these tests are skipped when it is not installed.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from plait.plugins import backend_factories
from plait.testing.servers import required_backends

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "plait-jsonfile"
# The plait modules a third-party backend needs: the protocol and records, the event codec, the
# events, and the local wake-up helper.
ALLOWED_PLAIT_IMPORTS = {
    "plait.backends.base",
    "plait.kernel.codec",
    "plait.kernel.events",
    "plait.backends._notify",
}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_jsonfile_uses_only_the_backend_surface_of_plait() -> None:
    used = {n for f in EXAMPLE.rglob("*.py") for n in _imports(f) if n.split(".")[0] == "plait"}
    assert used and used <= ALLOWED_PLAIT_IMPORTS, sorted(used - ALLOWED_PLAIT_IMPORTS)


def test_no_plait_module_imports_the_example_backend() -> None:
    offenders = [
        str(f.relative_to(ROOT))
        for f in (ROOT / "plait").rglob("*.py")
        if any(n.split(".")[0] == "plait_jsonfile" for n in _imports(f))
    ]
    assert not offenders


def test_jsonfile_registers_only_through_its_entry_point() -> None:
    text = (EXAMPLE / "pyproject.toml").read_text(encoding="utf-8")
    assert '[project.entry-points.plait]\njsonfile = "plait_jsonfile:JsonFilePlugin"' in text
    assert "jsonfile" not in (ROOT / "pyproject.toml").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def jsonfile_installed() -> None:
    if "jsonfile" not in backend_factories():
        reason = (
            "plait-jsonfile is not installed: pip install ./docs/examples/plait-jsonfile "
            "(scripts/dev.py test does it)"
        )
        if "jsonfile" in required_backends():
            pytest.fail(f"backend jsonfile is required by PLAIT_REQUIRE_BACKENDS: {reason}")
        pytest.skip(reason)


def run_pytest(tmp_path: Path, *args: str) -> int:
    """Run pytest in a subprocess from the repository root; the number of passed tests."""
    env = {**os.environ, "PLAIT_REQUIRE_BACKENDS": "jsonfile"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            *args,
            "-q",
            "-p",
            "no:cacheprovider",
            f"--basetemp={tmp_path / 'basetemp'}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"pytest {' '.join(args)} failed:\n{output[-6000:]}"
    summary = output.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    assert passed is not None and int(passed.group(1)) > 0, f"no test ran: {summary}"
    assert not re.search(r"\d+ (failed|error)", summary), summary
    return int(passed.group(1))


@pytest.mark.timeout(1500)
@pytest.mark.usefixtures("jsonfile_installed")
def test_jsonfile_passes_the_conformance_suite(tmp_path: Path) -> None:
    from plait.testing.conformance import OPTIONAL, TESTS

    passed = run_pytest(
        tmp_path,
        "--pyargs",
        "plait.testing.conformance",
        "--plait-conformance=jsonfile://{tmp}/store",
    )
    # jsonfile implements no optional extension: those tests skip, every other one runs.
    assert passed >= len(TESTS) - len(OPTIONAL), "some conformance tests were skipped"


@pytest.mark.timeout(1500)
@pytest.mark.usefixtures("jsonfile_installed")
def test_jsonfile_passes_the_e2e_suite(tmp_path: Path) -> None:
    run_pytest(tmp_path, "tests/e2e", "--plait-backend=jsonfile")
