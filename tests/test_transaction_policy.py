"""The transaction policy (`app/db.py`): no Stripe call while a transaction is open. The source is
walked for Stripe gateway calls inside `session_scope()` / `begin()` blocks and in functions that
are handed a session (a request transaction or a caller's)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import TypeGuard

APP = Path(__file__).resolve().parents[1] / "app"
GATEWAY_PACKAGE = APP / "stripe_gateway"
TRANSACTION_OPENERS = {"session_scope", "begin", "begin_nested"}
SESSION_TYPES = ("AsyncSession", "SessionDep")


def _is_stripe_call(node: ast.AST) -> TypeGuard[ast.Await]:
    """`await stripe.x(...)`, `await ctx.stripe.x(...)`, `await app.state.stripe.x(...)`."""
    if not (isinstance(node, ast.Await) and isinstance(node.value, ast.Call)):
        return False
    func = node.value.func
    if not isinstance(func, ast.Attribute):
        return False
    owner = func.value
    return (isinstance(owner, ast.Name) and owner.id == "stripe") or (
        isinstance(owner, ast.Attribute) and owner.attr == "stripe"
    )


def _opens_transaction(item: ast.withitem) -> bool:
    call = item.context_expr
    if not isinstance(call, ast.Call):
        return False
    name = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")
    return name in TRANSACTION_OPENERS


def _holds_session(func: ast.AsyncFunctionDef) -> bool:
    args = [*func.args.posonlyargs, *func.args.args, *func.args.kwonlyargs]
    return any(
        a.annotation is not None and ast.unparse(a.annotation) in SESSION_TYPES for a in args
    )


def violations(tree: ast.AST) -> list[int]:
    found: list[int] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.AsyncWith) and any(map(_opens_transaction, node.items)):
            found += [n.lineno for stmt in node.body for n in ast.walk(stmt) if _is_stripe_call(n)]
        if isinstance(node, ast.AsyncFunctionDef) and _holds_session(node):
            found += [n.lineno for n in ast.walk(node) if _is_stripe_call(n)]
    return sorted(set(found))


def test_no_stripe_call_while_a_transaction_is_open() -> None:
    offenders = []
    for path in sorted(APP.rglob("*.py")):
        if GATEWAY_PACKAGE in path.parents:
            continue
        for line in violations(ast.parse(path.read_text(), str(path))):
            offenders.append(f"{path.relative_to(APP.parent)}:{line}")
    assert offenders == []


def test_the_walk_finds_each_form() -> None:
    source = """
async def a(maker, stripe):
    async with session_scope(maker) as session:
        await stripe.create_refund()

async def b(session: AsyncSession, ctx):
    await ctx.stripe.retrieve_refund("re_1")

async def c(maker, stripe):
    async with session_scope(maker) as session:
        pass
    await stripe.create_refund()
"""
    assert violations(ast.parse(source)) == [4, 7]
