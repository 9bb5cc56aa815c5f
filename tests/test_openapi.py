"""`openapi.json` is what the app serves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app import cli


def test_committed_openapi_json_is_current() -> None:
    committed = json.loads(cli.OPENAPI_PATH.read_text())
    assert committed == json.loads(cli.render_openapi()), "openapi.json is stale: make openapi"


def test_a_stale_openapi_json_fails_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = tmp_path / "openapi.json"
    stale.write_text(cli.render_openapi().replace('"ToRouter Billing"', '"Old Title"'))
    monkeypatch.setattr(cli, "OPENAPI_PATH", stale)
    assert cli.main(["openapi", "--check"]) == 1
    monkeypatch.setattr(cli, "OPENAPI_PATH", tmp_path / "fresh.json")
    assert cli.main(["openapi"]) == 0
    assert cli.main(["openapi", "--check"]) == 0


def test_every_operation_has_a_summary_a_readable_id_and_a_tag() -> None:
    doc = json.loads(cli.render_openapi())
    for path, methods in doc["paths"].items():
        for method, operation in methods.items():
            assert operation.get("summary"), f"{method} {path} has no summary"
            assert operation.get("tags"), f"{method} {path} has no tag"
            assert "__" not in operation["operationId"], operation["operationId"]
