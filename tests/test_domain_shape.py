"""Every domain has the same shape (ARCHITECTURE.md, "Layers"): a service returns domain objects
(rows, dataclasses, a `Slice`) and its router renders them into the API's `*Out` models; a
router takes shared objects by name from `app/deps.py`, never from `request.app.state`.

Files another change still has to bring into shape are listed in `PENDING`, each with why; an
entry that is no longer needed fails too, so the list only shrinks."""

from __future__ import annotations

import ast
from pathlib import Path

APP = Path(__file__).resolve().parents[1] / "app"

PENDING: dict[str, str] = {}


def _rel(path: Path) -> str:
    return path.relative_to(APP.parent).as_posix()


def _routers() -> list[Path]:
    return sorted({*APP.glob("*/router.py"), *APP.glob("admin/*.py")})


def _services() -> list[Path]:
    return sorted({*APP.glob("*/service.py"), APP / "purchase" / "lifecycle.py"})


def _reads_app_state(path: Path) -> list[int]:
    """Lines with `<anything>.app.state`."""
    return [
        node.lineno
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Attribute)
        and node.attr == "state"
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "app"
    ]


def _api_models_imported(path: Path) -> list[str]:
    """The `*Out` models (and the API's `Page`) a module imports."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("app."):
            names += [
                alias.name
                for alias in node.names
                if alias.name.endswith("Out")
                or (node.module == "app.schemas" and alias.name == "Page")
            ]
    return names


def test_no_router_reads_app_state() -> None:
    routers = _routers()
    assert len(routers) > 15, "the glob must find the routers"
    offenders = {_rel(p): lines for p in routers if (lines := _reads_app_state(p))}
    assert offenders == {}, "take it from app/deps.py (e.g. SettingsDep, NowDep, UsageStoreDep)"


def test_services_return_domain_objects() -> None:
    services = _services()
    assert len(services) > 10, "the glob must find the services"
    offenders = {
        _rel(p): names
        for p in services
        if (names := _api_models_imported(p)) and _rel(p) not in PENDING
    }
    assert offenders == {}, "return rows, dataclasses or a Slice; render them in the router"


def test_every_pending_entry_is_still_needed() -> None:
    done = [
        name
        for name in PENDING
        if not (APP.parent / name).exists() or not _api_models_imported(APP.parent / name)
    ]
    assert done == [], "in shape now: remove from PENDING"


def test_the_checks_see_what_they_look_for(tmp_path: Path) -> None:
    bad = tmp_path / "router.py"
    bad.write_text(
        "from app.schemas import Page\nfrom app.x.schemas import ThingOut\n"
        "def f(request):\n    return request.app.state.clock\n"
    )
    assert _reads_app_state(bad) == [4]
    assert _api_models_imported(bad) == ["Page", "ThingOut"]
