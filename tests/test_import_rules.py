"""Static enforcement of the import rules in DESIGN.md section 1.

* ``plait.kernel`` is pure: it imports nothing from plait outside ``plait.kernel``; its only
  third-party imports are attrs/cattrs; stdlib modules that do I/O, concurrency or read a clock
  are forbidden, and so are calls to the wall clock and global randomness.
* ``plait.backends`` does not import ``plait.runtime`` (nor ``plait.testing``/``plait.cli``, which
  import the runtime, nor the top-level ``plait`` package, whose re-exports come from the runtime).
* ``plait.runtime`` does not import ``plait.testing`` or ``plait.cli``.

Every import statement counts, including those under ``if TYPE_CHECKING:`` and inside functions.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import attrs
import pytest

PLAIT_DIR = Path(__file__).resolve().parent.parent / "plait"

KERNEL_THIRD_PARTY = frozenset({"attrs", "attr", "cattrs"})
# Stdlib modules the kernel must not use: no I/O, no concurrency, no clock, no OS entropy.
KERNEL_FORBIDDEN = frozenset(
    {
        "anyio",
        "pluggy",
        "sqlite3",
        "time",
        "asyncio",
        "socket",
        "threading",
        "selectors",
        "ssl",
        "subprocess",
        "multiprocessing",
        "concurrent",
        "socketserver",
        "http",
        "urllib",
        "sched",
        "secrets",
    }
)
# Calls the kernel must not make (module-ish name, attribute): wall clock and OS randomness.
KERNEL_FORBIDDEN_CALLS = frozenset(
    {
        ("datetime", "now"),
        ("datetime", "utcnow"),
        ("datetime", "today"),
        ("date", "today"),
        ("uuid", "uuid1"),
        ("uuid", "uuid4"),
        ("os", "urandom"),
    }
)
# `random.Random(seed)` is deterministic; the module-level functions use the global generator.
RANDOM_ALLOWED_ATTRS = frozenset({"Random"})


@attrs.frozen
class Module:
    name: str
    is_package: bool
    source: str
    path: str


@attrs.frozen
class Import:
    name: str  # absolute dotted name of the imported module (or package whose attribute is used)
    lineno: int


@attrs.frozen
class Violation:
    module: str
    path: str
    lineno: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.lineno}: {self.module}: {self.message}"


# ------------------------------------------------------------------------------------------------
# discovery and import extraction


def discover(root: Path = PLAIT_DIR) -> list[Module]:
    """All modules of the plait package found under *root* (empty if it does not exist)."""
    if not root.is_dir():
        return []
    modules = []
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        modules.append(
            Module(
                name=".".join(parts),
                is_package=is_package,
                source=path.read_text(encoding="utf-8"),
                path=str(path.relative_to(root.parent)),
            )
        )
    return modules


def resolve_relative(module: Module, level: int, target: str | None) -> str:
    package = module.name if module.is_package else module.name.rpartition(".")[0]
    parts = package.split(".") if package else []
    if level - 1 > len(parts) - 1:
        raise ImportError(f"{module.path}: relative import beyond top-level package")
    base = parts[: len(parts) - (level - 1)]
    if target:
        base.append(target)
    return ".".join(base)


def imports_of(module: Module, known_modules: Iterable[str]) -> Iterator[Import]:
    """Absolute names imported by *module*.

    ``from pkg import x`` yields ``pkg.x`` when that is a known module, else ``pkg`` (``x`` is
    then an attribute of ``pkg``). Constant-string ``importlib.import_module``/``__import__``
    calls count as imports too.
    """
    known = set(known_modules)
    tree = ast.parse(module.source, filename=module.path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = resolve_relative(module, node.level, node.module)
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}" if base else alias.name
                yield Import(sub if sub in known else base, node.lineno)
        elif isinstance(node, ast.Call) and node.args:
            func, arg = node.func, node.args[0]
            is_dynamic = (isinstance(func, ast.Name) and func.id == "__import__") or (
                isinstance(func, ast.Attribute) and func.attr == "import_module"
            )
            if is_dynamic and isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                yield Import(arg.value, node.lineno)


def _tail_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def forbidden_calls(module: Module) -> Iterator[tuple[int, str]]:
    tree = ast.parse(module.source, filename=module.path)
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner, attr = _tail_name(node.func.value), node.func.attr
        if (owner, attr) in KERNEL_FORBIDDEN_CALLS:
            yield node.lineno, f"calls {owner}.{attr}() (wall clock / OS randomness)"
        elif owner == "random" and attr not in RANDOM_ALLOWED_ATTRS:
            yield node.lineno, f"calls random.{attr}() (global RNG; use a seeded random.Random)"


# ------------------------------------------------------------------------------------------------
# rules


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def kernel_rule(module: Module, imp: Import) -> str | None:
    top = imp.name.partition(".")[0]
    if top == "plait":
        if within(imp.name, "plait.kernel"):
            return None
        return f"imports {imp.name}: the kernel imports nothing from plait outside plait.kernel"
    if top in KERNEL_FORBIDDEN:
        return f"imports {imp.name}: the kernel does no I/O and reads no clock"
    if top in KERNEL_THIRD_PARTY or top == "__future__":
        return None
    if top in sys.stdlib_module_names:
        return None
    return f"imports {imp.name}: the kernel may only use attrs, cattrs and the stdlib"


def backends_rule(module: Module, imp: Import) -> str | None:
    if imp.name == "plait":
        return "imports the top-level plait package (its re-exports come from plait.runtime)"
    for banned in ("plait.runtime", "plait.testing", "plait.cli"):
        if within(imp.name, banned):
            return f"imports {imp.name}: backends must not depend on the runtime"
    return None


def runtime_rule(module: Module, imp: Import) -> str | None:
    for banned in ("plait.testing", "plait.cli"):
        if within(imp.name, banned):
            return f"imports {imp.name}: the runtime must not depend on {banned}"
    return None


Rule = Callable[[Module, Import], str | None]
RULES: dict[str, Rule] = {
    "plait.kernel": kernel_rule,
    "plait.backends": backends_rule,
    "plait.runtime": runtime_rule,
}


def check(modules: list[Module], layer: str) -> list[Violation]:
    """Violations of *layer*'s rule by the modules of that layer in *modules*."""
    rule = RULES[layer]
    known = {m.name for m in modules}
    found = []
    for module in modules:
        if not within(module.name, layer):
            continue
        for imp in imports_of(module, known):
            message = rule(module, imp)
            if message:
                found.append(Violation(module.name, module.path, imp.lineno, message))
        if layer == "plait.kernel":
            for lineno, message in forbidden_calls(module):
                found.append(Violation(module.name, module.path, lineno, message))
    return found


# ------------------------------------------------------------------------------------------------
# the rules, applied to the real package


ALL_MODULES = discover()


@pytest.mark.parametrize("layer", sorted(RULES))
def test_import_rules(layer: str) -> None:
    violations = check(ALL_MODULES, layer)
    assert not violations, "import rule violations:\n" + "\n".join(map(str, violations))


def test_only_plait_is_a_top_level_package() -> None:
    assert all(m.name == "plait" or m.name.startswith("plait.") for m in ALL_MODULES)


# ------------------------------------------------------------------------------------------------
# meta-tests: the checker itself catches violations


def synthetic(name: str, source: str, is_package: bool = False) -> Module:
    return Module(name, is_package, source, name.replace(".", "/") + ".py")


BASE = [
    synthetic("plait", "", is_package=True),
    synthetic("plait.kernel", "", is_package=True),
    synthetic("plait.kernel.events", "X = 1\n"),
    synthetic("plait.runtime", "", is_package=True),
    synthetic("plait.runtime.engine", "X = 1\n"),
    synthetic("plait.backends", "", is_package=True),
    synthetic("plait.backends.base", "X = 1\n"),
    synthetic("plait.testing", "", is_package=True),
]


def messages(layer: str, *extra: Module) -> list[str]:
    return [v.message for v in check([*BASE, *extra], layer)]


def test_checker_accepts_clean_kernel_module() -> None:
    good = synthetic(
        "plait.kernel.machine",
        "from __future__ import annotations\n"
        "import attrs, attr, cattrs, datetime, random, uuid, hashlib, json, typing, inspect\n"
        "from typing import TYPE_CHECKING\n"
        "from . import events\n"
        "from .events import X\n"
        "from plait.kernel.events import X as Y\n"
        "rng = random.Random(1)\n"
        "u = uuid.UUID(int=1)\n",
    )
    assert messages("plait.kernel", good) == []


@pytest.mark.parametrize(
    "source",
    [
        "import anyio\n",
        "import pluggy\n",
        "import sqlite3\n",
        "import time\n",
        "from time import monotonic\n",
        "import asyncio\n",
        "import socket\n",
        "import threading\n",
        "import concurrent.futures\n",
        "import requests\n",
        "from plait import runtime\n",
        "from plait.runtime.engine import X\n",
        "import plait\n",
        "from .. import runtime\n",
        "from ..backends import base\n",
        "def f():\n    from ..runtime import engine\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from plait.testing import x\n",
        "import importlib\nm = importlib.import_module('plait.runtime')\n",
        "import datetime\nt = datetime.datetime.now()\n",
        "from datetime import datetime\nt = datetime.utcnow()\n",
        "import uuid\nu = uuid.uuid4()\n",
        "import random\nx = random.random()\n",
    ],
)
def test_checker_flags_bad_kernel_module(source: str) -> None:
    bad = synthetic("plait.kernel.machine", source)
    assert messages("plait.kernel", bad), f"not flagged:\n{source}"


@pytest.mark.parametrize(
    "source",
    [
        "from plait.runtime import engine\n",
        "from ..runtime.engine import X\n",
        "from .. import runtime\n",
        "import plait.runtime.engine\n",
        "from plait.testing import x\n",
        "from plait import Engine\n",
        "import plait\n",
    ],
)
def test_checker_flags_backend_importing_runtime(source: str) -> None:
    bad = synthetic("plait.backends.sqlite", source)
    assert messages("plait.backends", bad), f"not flagged:\n{source}"


def test_checker_accepts_clean_backend_module() -> None:
    good = synthetic(
        "plait.backends.sqlite",
        "import sqlite3, anyio\nfrom ..kernel import events\nfrom .base import X\n"
        "from plait.kernel.events import X as Y\n",
    )
    assert messages("plait.backends", good) == []


@pytest.mark.parametrize("source", ["from ..testing import x\n", "import plait.cli\n"])
def test_checker_flags_runtime_importing_testing_or_cli(source: str) -> None:
    bad = synthetic("plait.runtime.worker", source)
    assert messages("plait.runtime", bad), f"not flagged:\n{source}"


def test_checker_accepts_clean_runtime_module() -> None:
    good = synthetic(
        "plait.runtime.worker",
        "import anyio\nfrom ..kernel import events\nfrom ..backends import base\n"
        "from . import engine\n",
    )
    assert messages("plait.runtime", good) == []


def test_relative_import_resolution() -> None:
    pkg = synthetic("plait.kernel", "", is_package=True)
    mod = synthetic("plait.kernel.machine", "")
    assert resolve_relative(pkg, 1, None) == "plait.kernel"
    assert resolve_relative(pkg, 2, "runtime") == "plait.runtime"
    assert resolve_relative(mod, 1, "events") == "plait.kernel.events"
    assert resolve_relative(mod, 2, "backends.base") == "plait.backends.base"
    with pytest.raises(ImportError):
        resolve_relative(mod, 4, None)


def test_checker_on_files(tmp_path: Path) -> None:
    """End to end through `discover`: a bad file on disk is reported with its line number."""
    kernel = tmp_path / "plait" / "kernel"
    kernel.mkdir(parents=True)
    (tmp_path / "plait" / "__init__.py").write_text("")
    (kernel / "__init__.py").write_text('"""kernel"""\n')
    (kernel / "bad.py").write_text("import json\n\nimport anyio\n")
    violations = check(discover(tmp_path / "plait"), "plait.kernel")
    assert [(v.module, v.lineno) for v in violations] == [("plait.kernel.bad", 3)]
