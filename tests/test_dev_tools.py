"""The development tools (`dev/`, `testing/`) stay out of the shipped package and out of the
tests' folder, and say what to do when used wrongly."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from dev import sandbox

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "app"
TESTS = ROOT / "tests"


def _imported_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
    return modules


def test_the_shipped_package_imports_neither_dev_nor_tests() -> None:
    offenders = {
        f"{path.relative_to(APP.parent)}: {module}"
        for path in APP.rglob("*.py")
        for module in _imported_modules(path)
        if module.split(".")[0] in {"dev", "tests", "testing"}
    }
    assert offenders == set()


def test_the_tests_folder_holds_only_tests() -> None:
    """A newcomer finds the tests in tests/ and nothing else: the Stripe peer, the fixtures
    (pytest plugins), the helpers and the fuzz and crash drivers live in testing/. A test module
    imports helpers from testing/, never from another test module or a conftest."""
    strays = sorted(
        str(path.relative_to(ROOT))
        for path in TESTS.rglob("*")
        if path.is_file()
        and "__pycache__" not in path.parts
        and not (path.name.startswith("test_") and path.suffix == ".py")
        and path.name not in {"__init__.py", "conftest.py"}
    )
    assert strays == [], "move these to testing/ (see testing/__init__.py)"
    borrowed = sorted(
        f"{path.relative_to(ROOT)}: {module}"
        for path in TESTS.rglob("*.py")
        for module in _imported_modules(path)
        if module.startswith("tests.")
    )
    assert borrowed == [], "move what they import to testing/helpers/"


async def test_paying_without_a_running_sandbox_says_how_to_start_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sandbox, "SANDBOX_STATE", tmp_path / "state.json")

    assert await sandbox.pay("ord_1", decline=False) == 2
    assert "start one with `make run`" in capsys.readouterr().out
