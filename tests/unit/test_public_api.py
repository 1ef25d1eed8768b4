"""The public surface: what each package exports, and the one error family with stable codes."""

from __future__ import annotations

import importlib
import pkgutil
import re
from types import ModuleType, UnionType
from typing import Any

import pytest

import gatepass
from gatepass import errors
from gatepass.errors import GatepassError

PACKAGES = ["gatepass.core", "gatepass.sdk", "gatepass.credentials", "gatepass.codec",
            "gatepass.transport", "gatepass.worker", "gatepass.errors", "gatepass.export",
            "gatepass.approvals", "gatepass.connectors", "gatepass.importers"]


def defined_in(module: ModuleType, value: Any) -> bool:
    """Whether a public name's value comes from this package (constants have no __module__)."""
    if isinstance(value, UnionType):  # a type alias such as LifecycleEvent = A | B | C
        return all(defined_in(module, arg) for arg in value.__args__)
    origin = getattr(value, "__module__", None)
    if origin is None:
        return True
    return origin == module.__name__ or origin.startswith(module.__name__ + ".")


def public_names(module: ModuleType) -> set[str]:
    return {name for name, value in vars(module).items()
            if not name.startswith("_") and not isinstance(value, ModuleType)
            and defined_in(module, value)}


@pytest.mark.parametrize("name", PACKAGES)
def test_every_exported_name_exists(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__all__, f"{name} exports nothing"
    assert len(module.__all__) == len(set(module.__all__))
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert missing == []


@pytest.mark.parametrize("name", PACKAGES)
def test_public_names_are_exactly_the_exported_ones(name: str) -> None:
    module = importlib.import_module(name)
    assert public_names(module) == set(module.__all__)


@pytest.mark.parametrize("name", PACKAGES)
def test_exported_names_come_from_the_package(name: str) -> None:
    module = importlib.import_module(name)
    foreign = [n for n in module.__all__ if not defined_in(module, getattr(module, n))]
    assert foreign == []


def test_helper_detects_a_foreign_name() -> None:
    # errors.py imports typing.Any and __future__.annotations: neither is part of its API
    assert "Any" in vars(errors) and "Any" not in public_names(errors)
    assert "annotations" not in public_names(errors)


# ---- the error family --------------------------------------------------------------------
def _import_every_module() -> None:
    for info in pkgutil.walk_packages(gatepass.__path__, "gatepass."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)


def _family(cls: type[GatepassError]) -> list[type[GatepassError]]:
    found = [cls]
    for sub in cls.__subclasses__():
        found += _family(sub)
    return found


_import_every_module()
FAMILY = _family(GatepassError)


def test_every_error_lives_in_errors_py_and_is_exported() -> None:
    assert len(FAMILY) > 20
    assert {cls.__module__ for cls in FAMILY} == {"gatepass.errors"}
    assert {cls.__name__ for cls in FAMILY} == set(errors.__all__)


@pytest.mark.parametrize("cls", FAMILY, ids=lambda c: c.__name__)
def test_error_has_its_own_code_and_a_one_line_docstring(cls: type[GatepassError]) -> None:
    code = cls.__dict__.get("code")
    assert isinstance(code, str) and re.fullmatch(r"[a-z][a-z0-9_]*", code), code
    doc = cls.__dict__.get("__doc__")
    assert isinstance(doc, str) and doc.strip() and "\n" not in doc.strip()


def test_error_codes_are_unique() -> None:
    codes = [cls.code for cls in FAMILY]
    assert len(codes) == len(set(codes)), sorted(codes)


def _tree() -> list[tuple[int, str, str | None]]:
    """(depth, class name, code) for each line of the tree drawn in errors.py's docstring."""
    rows = []
    for line in (errors.__doc__ or "").splitlines():
        match = re.fullmatch(r"(?P<indent>[ │├└─]*?)(?P<name>[A-Z]\w+Error|Authorization\w+)"
                             r"(?:\s+(?P<code>[a-z_]+))?\s*", line.removeprefix("    "))
        if match is None:
            continue
        rows.append((len(match["indent"]) // 4, match["name"], match["code"]))
    return rows


def test_docstring_tree_lists_every_class_with_its_code() -> None:
    drawn = {name: code for _depth, name, code in _tree()}
    expected: dict[str, str | None] = {cls.__name__: cls.code for cls in FAMILY}
    expected["GatepassError"] = None  # the root is drawn without a code
    assert drawn == expected


def test_docstring_tree_nests_each_class_under_its_base() -> None:
    parents: list[str] = []
    by_name = {cls.__name__: cls for cls in FAMILY}
    rows = _tree()
    assert rows[0] == (0, "GatepassError", None)
    for depth, name, _code in rows:
        del parents[depth:]
        if depth:
            assert by_name[name].__bases__[0].__name__ == parents[-1], name
        parents.append(name)


@pytest.mark.parametrize(("cls", "kwargs", "text"), [
    (errors.ConfigError, {"key": "partitions", "message": "must be between 1 and 1024"},
     "partitions: must be between 1 and 1024"),
    (errors.AuthorizationDenied, {"message": "denied: out_of_scope", "verdict": "v"},
     "denied: out_of_scope"),
])
def test_errors_with_extra_context_keep_it(cls: type[GatepassError], kwargs: dict[str, Any],
                                           text: str) -> None:
    error = cls(**kwargs)
    assert str(error) == text
    assert isinstance(error, GatepassError)
    if "key" in kwargs:
        assert error.key == kwargs["key"]  # type: ignore[attr-defined]
    if "verdict" in kwargs:
        assert error.verdict == kwargs["verdict"]  # type: ignore[attr-defined]
