#!/usr/bin/env python3
"""Developer entry point used by the README quickstart (stdlib only, Python 3.11+).

    python3 scripts/dev.py demo [args...]   # `plait demo` on the embedded SQLite default
    python3 scripts/dev.py test [args...]   # ruff, mypy (strict on plait.kernel), pytest

Both commands create `.venv` in the repository root when it is missing and (re)install the
project editable with the `all` and `dev` extras whenever pyproject.toml changed since the last
install (its hash is kept in `.venv/.plait-installed`). `test` also installs the example
third-party backend `docs/examples/plait-jsonfile` (re-installed whenever its files change; hash
in `.venv/.plait-jsonfile-installed`) and requires it, so the conformance and end-to-end suites
run against a backend found only through its entry point.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
MARKER = VENV / ".plait-installed"
PYPROJECT = ROOT / "pyproject.toml"
EXTRAS = "all,dev"
EXAMPLE_BACKEND = ROOT / "docs" / "examples" / "plait-jsonfile"
EXAMPLE_MARKER = VENV / ".plait-jsonfile-installed"
LINT_DIRS = ("plait", "tests", "benchmarks", "scripts")

if sys.version_info < (3, 11):  # noqa: UP036 - this script must explain itself on old Pythons
    sys.exit(f"scripts/dev.py needs Python >= 3.11 (this is {sys.version.split()[0]})")


def heading(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def fail(message: str, code: int = 1) -> NoReturn:
    print(f"\nERROR: {message}", file=sys.stderr, flush=True)
    sys.exit(code or 1)


def bin_path(name: str) -> Path:
    if os.name == "nt":
        exe = VENV / "Scripts" / f"{name}.exe"
        return exe if exe.exists() or name == "python" else VENV / "Scripts" / name
    return VENV / "bin" / name


def run(cmd: Sequence[str | os.PathLike[str]], what: str) -> None:
    """Run *cmd* in the repository root; exit with its code (or 1) if it fails."""
    try:
        rc = subprocess.call([os.fspath(c) for c in cmd], cwd=ROOT)
    except FileNotFoundError as exc:
        fail(f"{what}: cannot execute {exc.filename}")
    if rc != 0:
        fail(f"{what} failed (exit code {rc})", rc)


def venv_python_works() -> bool:
    python = bin_path("python")
    if not python.exists():
        return False
    try:
        return subprocess.call([python, "-c", "import sys"], cwd=ROOT) == 0
    except OSError:
        return False


def create_venv() -> None:
    heading(f"creating virtual environment {VENV.relative_to(ROOT)}")
    try:
        import ensurepip  # noqa: F401

        has_ensurepip = True
    except ImportError:
        has_ensurepip = False
    venv.EnvBuilder(with_pip=has_ensurepip, clear=VENV.exists(), symlinks=os.name != "nt").create(
        VENV
    )
    python = bin_path("python")
    if not has_ensurepip:
        # Debian/Ubuntu ship ensurepip separately (python3-venv); fall back to the system pip.
        rc = subprocess.call(
            [sys.executable, "-m", "pip", "--python", os.fspath(python), "install", "-q", "pip"],
            cwd=ROOT,
        )
        if rc != 0:
            fail(
                "this Python has no ensurepip and no usable pip; install the venv module "
                "(e.g. `apt-get install python3-venv`) and run again"
            )
    run([python, "-m", "pip", "install", "--quiet", "--upgrade", "pip"], "upgrading pip")
    MARKER.unlink(missing_ok=True)


def pyproject_hash() -> str:
    return hashlib.sha256(PYPROJECT.read_bytes()).hexdigest()


def ensure_env() -> None:
    if not venv_python_works():
        create_venv()
    digest = pyproject_hash()
    try:
        installed = MARKER.read_text().strip()
    except FileNotFoundError:
        installed = ""
    if installed == digest:
        return
    heading(f"installing plait (editable, extras [{EXTRAS}]) into {VENV.relative_to(ROOT)}")
    run(
        [bin_path("python"), "-m", "pip", "install", "--quiet", "-e", f".[{EXTRAS}]"],
        "pip install",
    )
    MARKER.write_text(digest + "\n")


def example_backend_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted(EXAMPLE_BACKEND.rglob("*")):
        rel = path.relative_to(EXAMPLE_BACKEND)
        skip = {"__pycache__", "build", "dist"} & set(rel.parts) or rel.suffix == ".pyc"
        if path.is_file() and not skip and not any(p.endswith(".egg-info") for p in rel.parts):
            digest.update(rel.as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def ensure_example_backend() -> bool:
    """Install the example third-party backend when its files changed; False if absent."""
    if not (EXAMPLE_BACKEND / "pyproject.toml").is_file():
        return False
    digest = example_backend_hash()
    try:
        installed = EXAMPLE_MARKER.read_text().strip()
    except FileNotFoundError:
        installed = ""
    if installed != digest:
        heading(f"installing {EXAMPLE_BACKEND.relative_to(ROOT)} into {VENV.relative_to(ROOT)}")
        run(
            [
                bin_path("python"),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--force-reinstall",
                EXAMPLE_BACKEND,
            ],
            "pip install plait-jsonfile",
        )
        EXAMPLE_MARKER.write_text(digest + "\n")
    return True


def cmd_demo(args: list[str]) -> None:
    ensure_env()
    plait = bin_path("plait")
    argv = [os.fspath(plait), "demo", *args]
    heading(" ".join(["plait", "demo", *args]))
    if os.name == "nt":
        sys.exit(subprocess.call(argv, cwd=ROOT))
    os.chdir(ROOT)
    os.execv(argv[0], argv)


def cmd_test(args: list[str]) -> None:
    ensure_env()

    lint_dirs = [d for d in LINT_DIRS if (ROOT / d).is_dir()]
    heading(f"ruff check {' '.join(lint_dirs)}")
    run([bin_path("ruff"), "check", *lint_dirs], "ruff")

    if (ROOT / "plait" / "kernel").is_dir():
        heading("mypy -p plait.kernel  (strict, see [tool.mypy] in pyproject.toml)")
        run([bin_path("mypy"), "-p", "plait.kernel"], "mypy")
    else:
        fail("plait/kernel does not exist; nothing for mypy to check")

    env = dict(os.environ)
    if ensure_example_backend():
        # tests/conformance/test_jsonfile.py must run, never be skipped.
        required = [b for b in env.get("PLAIT_REQUIRE_BACKENDS", "").split(",") if b.strip()]
        env["PLAIT_REQUIRE_BACKENDS"] = ",".join(dict.fromkeys([*required, "jsonfile"]))

    pytest_args = args or ["-q"]
    heading(f"pytest {' '.join(pytest_args)}")
    rc = subprocess.call([os.fspath(bin_path("pytest")), *pytest_args], cwd=ROOT, env=env)
    if rc == 5:
        fail("pytest collected no tests (exit code 5)", 5)
    if rc != 0:
        fail(f"pytest failed (exit code {rc})", rc)
    print("\nall checks passed", flush=True)


COMMANDS = {"demo": cmd_demo, "test": cmd_test}


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
