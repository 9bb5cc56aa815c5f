"""Every answer the test suite receives must be one the app's OpenAPI document declares.

`ContractCheck` is an httpx response hook on the `client` fixture: for each response to an
operation of the document it asserts that the operation declares the status and, when the status
declares content, the response's content type. So every test of the suite doubles as a contract
test of the operations it calls, and an error added without its declaration fails where it is
first answered.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI

from app.openapi import api_routes

_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


@dataclass(frozen=True)
class _Operation:
    method: str
    path: str
    pattern: re.Pattern[str]
    literal_chars: int
    responses: dict[str, Any]


_BY_ROUTES: dict[tuple[tuple[str, tuple[str, ...]], ...], ContractCheck] = {}


class ContractCheck:
    """Checks responses against one OpenAPI document."""

    @classmethod
    def for_app(cls, app: FastAPI) -> ContractCheck:
        """The check of the app's document, built once per set of routes (building the document
        costs a tenth of a second, and nearly every test makes an app)."""
        key = tuple(sorted((r.path_format, tuple(sorted(r.methods))) for r in api_routes(app)))
        if key not in _BY_ROUTES:
            _BY_ROUTES[key] = cls(app.openapi())
        return _BY_ROUTES[key]

    def __init__(self, document: dict[str, Any]) -> None:
        self.operations: list[_Operation] = []
        for path, item in document.get("paths", {}).items():
            regex = "^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(path)) + "$"
            literal = len(re.sub(r"\{[^/]+?\}", "", path))
            for method, operation in item.items():
                if method in _METHODS:
                    self.operations.append(
                        _Operation(
                            method,
                            path,
                            re.compile(regex),
                            literal,
                            operation.get("responses", {}),
                        )
                    )
        self.checked = 0

    def operation(self, method: str, path: str) -> _Operation | None:
        """The operation a request reaches (the most literal template wins)."""
        matches = [op for op in self.operations if op.method == method and op.pattern.match(path)]
        return max(matches, key=lambda op: op.literal_chars, default=None)

    def problem(self, method: str, path: str, status: int, content_type: str) -> str | None:
        """What is undeclared about this answer, or None."""
        operation = self.operation(method.lower(), path)
        if operation is None:
            return None  # an unknown route or method: no operation to hold it to
        declared = operation.responses.get(str(status)) or operation.responses.get(
            f"{str(status)[0]}XX"
        )
        if declared is None:
            declared = operation.responses.get("default")
        where = f"{method.upper()} {operation.path} answered {status}"
        if declared is None:
            return f"{where}, which its operation does not declare ({sorted(operation.responses)})"
        content = declared.get("content")
        media_type = content_type.split(";")[0].strip()
        if content and media_type and media_type not in content:
            return f"{where} as {media_type}, declared as {sorted(content)}"
        return None

    async def __call__(self, response: httpx.Response) -> None:
        request = response.request
        problem = self.problem(
            request.method,
            request.url.path,
            response.status_code,
            response.headers.get("content-type", ""),
        )
        self.checked += 1
        assert problem is None, f"undeclared answer: {problem}"
