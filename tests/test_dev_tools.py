"""The development tools (`dev/`) stay out of the shipped package, and say what to do when
used wrongly."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from dev import sandbox

APP = Path(__file__).resolve().parent.parent / "app"


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
        if module.split(".")[0] in {"dev", "tests"}
    }
    assert offenders == set()


async def test_paying_without_a_running_sandbox_says_how_to_start_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sandbox, "SANDBOX_STATE", tmp_path / "state.json")

    assert await sandbox.pay("ord_1", decline=False) == 2
    assert "start one with `make run`" in capsys.readouterr().out
