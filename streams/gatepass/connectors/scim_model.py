"""The SCIM 2.0 User resource without HTTP: validation, filters, PATCH, attribute projection.

Pure functions over plain dicts (RFC 7643 / RFC 7644), so every rule is testable without a
server. A stored user is a dict of canonical attribute names (`userName`, `name`, `emails`,
the enterprise extension under its URN...) plus `id` and `meta`; only attributes published
in `_scim_schemas.SCHEMAS` are kept, everything else a client sends (`password` above all)
is dropped. Attribute names are case-insensitive on input, as RFC 7643 section 2.1 says.

Known deviations, on purpose: a boolean may arrive as the string "True"/"False" (Microsoft
Entra sends `active` that way in PATCH); an operation on an attribute Gatepass does not keep
is accepted and does nothing (Entra sends every mapped attribute); `replace` on a filtered
path that matches nothing adds the value when the filter only states `eq` equalities (the
way Entra adds `emails[type eq "work"].value`).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gatepass.connectors._scim_schemas import SCHEMAS

__all__ = [
    "ENTERPRISE_URN",
    "ERROR_URN",
    "LIST_URN",
    "PATCH_URN",
    "SEARCH_URN",
    "USER_URN",
    "Attr",
    "ScimError",
    "UserSchema",
    "apply_patch",
    "matches",
    "normalize_user",
    "parse_filter",
    "project",
]

USER_URN = "urn:ietf:params:scim:schemas:core:2.0:User"
ENTERPRISE_URN = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
PATCH_URN = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
LIST_URN = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
SEARCH_URN = "urn:ietf:params:scim:api:messages:2.0:SearchRequest"
ERROR_URN = "urn:ietf:params:scim:api:messages:2.0:Error"
MAX_STRING = 2048
MAX_ITEMS = 100
MAX_OPERATIONS = 1000
MAX_FILTER_LENGTH = 2048
_BOOL_TEXT = {"true": True, "false": False}


class ScimError(Exception):
    """An RFC 7644 section 3.12 error: HTTP status, optional scimType, detail."""

    def __init__(self, status: int, detail: str, scim_type: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.scim_type = scim_type
        self.detail = detail

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schemas": [ERROR_URN], "status": str(self.status)}
        if self.scim_type:
            out["scimType"] = self.scim_type
        out["detail"] = self.detail
        return out


def invalid(detail: str, scim_type: str = "invalidValue") -> ScimError:
    return ScimError(400, detail, scim_type)


@dataclass(frozen=True)
class Attr:
    """One attribute definition from a published schema."""

    name: str
    type: str
    multi: bool = False
    required: bool = False
    case_exact: bool = False
    mutability: str = "readWrite"
    sub: Mapping[str, Attr] = field(default_factory=dict)

    @classmethod
    def from_schema(cls, d: Mapping[str, Any]) -> Attr:
        subs = {s["name"].lower(): cls.from_schema(s) for s in d.get("subAttributes") or []}
        return cls(name=d["name"], type=d["type"], multi=bool(d.get("multiValued")),
                   required=bool(d.get("required")), case_exact=bool(d.get("caseExact")),
                   mutability=d.get("mutability", "readWrite"), sub=subs)

    @property
    def writable(self) -> bool:
        return self.mutability != "readOnly"


class UserSchema:
    """The User schema and its extension, indexed by lower-case attribute name."""

    def __init__(self, schemas: list[dict[str, Any]] = SCHEMAS) -> None:
        by_id = {s["id"]: s for s in schemas}
        self.core: dict[str, Attr] = {
            a["name"].lower(): Attr.from_schema(a) for a in by_id[USER_URN]["attributes"]}
        # Common attributes (RFC 7643 section 3.1), not listed in the schema itself.
        self.core["id"] = Attr("id", "string", case_exact=True, mutability="readOnly")
        self.core["externalid"] = Attr("externalId", "string", case_exact=True)
        self.core["meta"] = Attr("meta", "complex", mutability="readOnly")
        self.extensions: dict[str, dict[str, Attr]] = {
            ENTERPRISE_URN: {a["name"].lower(): Attr.from_schema(a)
                             for a in by_id[ENTERPRISE_URN]["attributes"]}}
        self._urns = {u.lower(): u for u in (USER_URN, *self.extensions)}

    def urn(self, text: str) -> str | None:
        return self._urns.get(text.lower())

    def split_urn(self, path: str) -> tuple[str | None, str]:
        """('urn:...:User', 'rest') for a URN-qualified path; (None, path) otherwise.

        The core URN qualifies core attributes, so it maps to None (the top level).
        """
        low = path.lower()
        for lurn, urn in self._urns.items():
            if low == lurn:
                return (None if urn == USER_URN else urn), ""
            if low.startswith(lurn + ":"):
                return (None if urn == USER_URN else urn), path[len(lurn) + 1:]
        return None, path

    def attrs(self, urn: str | None) -> dict[str, Attr]:
        return self.core if urn is None else self.extensions[urn]


SCHEMA = UserSchema()


# ---- values ---------------------------------------------------------------------------

def _scalar(attr: Attr, value: Any, where: str) -> Any:
    kind = attr.type
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _BOOL_TEXT:
            return _BOOL_TEXT[value.strip().lower()]
        raise invalid(f"{where} must be a boolean")
    if kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            raise invalid(f"{where} must be an integer")
        return value
    if kind == "decimal":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise invalid(f"{where} must be a number")
        return value
    if not isinstance(value, str):
        raise invalid(f"{where} must be a string")
    if len(value) > MAX_STRING:
        raise invalid(f"{where} is longer than {MAX_STRING} characters")
    if kind == "dateTime":
        try:
            datetime.fromisoformat(value)
        except ValueError as exc:
            raise invalid(f"{where} must be an xsd:dateTime") from exc
    return value


def _single(attr: Attr, value: Any, where: str) -> Any:
    """A single value of `attr` (an item when multi-valued); None when it holds nothing."""
    if value is None:
        return None
    if attr.type != "complex":
        return _scalar(attr, value, where)
    if not isinstance(value, dict):
        raise invalid(f"{where} must be an object")
    out: dict[str, Any] = {}
    for key, inner in value.items():
        sub = attr.sub.get(key.lower())
        if sub is None or not sub.writable:
            continue  # unknown or read-only sub-attributes are dropped
        norm = _single(sub, inner, f"{where}.{sub.name}")
        if norm is not None:
            out[sub.name] = norm
    return out or None


def normalize_value(attr: Attr, value: Any, where: str) -> Any:
    """The stored form of a whole attribute value; None when it holds nothing."""
    if value is None:
        return None
    if not attr.multi:
        return _single(attr, value, where)
    if not isinstance(value, list):
        raise invalid(f"{where} must be a list")
    if len(value) > MAX_ITEMS:
        raise invalid(f"{where} holds more than {MAX_ITEMS} values")
    items = [_single(attr, v, f"{where}[{i}]") for i, v in enumerate(value)]
    kept = [i for i in items if i is not None]
    return kept or None


def _normalize_attrs(attrs: Mapping[str, Attr], body: Mapping[str, Any], where: str
                     ) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in body.items():
        attr = attrs.get(key.lower())
        if attr is None or not attr.writable:
            continue
        norm = normalize_value(attr, value, f"{where}{attr.name}")
        if norm is not None:
            out[attr.name] = norm
    return out


def normalize_user(body: Any, schema: UserSchema = SCHEMA) -> dict[str, Any]:
    """The attributes of a POST/PUT body as stored (no id, no meta); ScimError if invalid."""
    if not isinstance(body, dict):
        raise invalid("the body must be a JSON object", "invalidSyntax")
    schemas = body.get("schemas")
    if not isinstance(schemas, list) or not all(isinstance(s, str) for s in schemas) \
            or USER_URN.lower() not in {s.lower() for s in schemas}:
        raise invalid(f"schemas must list {USER_URN}", "invalidSyntax")
    core = {k: v for k, v in body.items() if schema.urn(k) is None and not k.startswith("urn:")}
    out = _normalize_attrs(schema.core, core, "")
    for key, value in body.items():
        urn = schema.urn(key)
        if urn is None or urn == USER_URN:
            continue
        if not isinstance(value, dict):
            raise invalid(f"{urn} must be an object")
        ext = _normalize_attrs(schema.extensions[urn], value, f"{urn}:")
        if ext:
            out[urn] = ext
    check_user(out)
    return out


def check_user(user: Mapping[str, Any]) -> None:
    name = user.get("userName")
    if not isinstance(name, str) or not name.strip():
        raise invalid("userName is required")


# ---- filters (RFC 7644 section 3.4.2.2) --------------------------------------------------

_TOKEN_RE = re.compile(r"""
    \s*(?:
      (?P<string>"(?:[^"\\]|\\.)*")
    | (?P<open>\() | (?P<close>\)) | (?P<lbr>\[) | (?P<rbr>\])
    | (?P<word>[A-Za-z0-9_:.$+-]+)
    )""", re.VERBOSE)
_COMPARE = {"eq", "ne", "co", "sw", "ew", "gt", "ge", "lt", "le"}


@dataclass(frozen=True)
class _Path:
    urn: str | None
    attr: str
    sub: str | None = None


@dataclass(frozen=True)
class Compare:
    path: _Path
    op: str  # one of _COMPARE, or "pr"
    value: Any = None


@dataclass(frozen=True)
class Logical:
    op: str  # and, or
    left: Node
    right: Node


@dataclass(frozen=True)
class Not:
    inner: Node


@dataclass(frozen=True)
class ValuePath:
    path: _Path
    inner: Node


Node = Compare | Logical | Not | ValuePath


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None or m.end() == pos:
            raise invalid(f"cannot parse the filter near {text[pos:pos + 20]!r}",
                          "invalidFilter")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str, schema: UserSchema) -> None:
        if len(text) > MAX_FILTER_LENGTH:
            raise invalid("the filter is too long", "invalidFilter")
        self.toks = _tokens(text)
        self.i = 0
        self.schema = schema
        self.depth = 0

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, kind: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None or (kind is not None and tok[0] != kind):
            raise invalid("the filter ends too early or has an unexpected token",
                          "invalidFilter")
        self.i += 1
        return tok

    def keyword(self, *words: str) -> str | None:
        tok = self.peek()
        if tok and tok[0] == "word" and tok[1].lower() in words:
            self.i += 1
            return tok[1].lower()
        return None

    def parse(self) -> Node:
        node = self.or_()
        if self.peek() is not None:
            raise invalid("the filter has trailing tokens", "invalidFilter")
        return node

    def or_(self) -> Node:
        node = self.and_()
        while self.keyword("or"):
            node = Logical("or", node, self.and_())
        return node

    def and_(self) -> Node:
        node = self.unary()
        while self.keyword("and"):
            node = Logical("and", node, self.unary())
        return node

    def unary(self) -> Node:
        self.depth += 1
        if self.depth > 32:
            raise invalid("the filter nests too deeply", "invalidFilter")
        try:
            if self.keyword("not"):
                self.take("open")
                inner = self.or_()
                self.take("close")
                return Not(inner)
            tok = self.peek()
            if tok and tok[0] == "open":
                self.take("open")
                inner = self.or_()
                self.take("close")
                return inner
            return self.attr_expr()
        finally:
            self.depth -= 1

    def path(self, text: str) -> _Path:
        urn, rest = self.schema.split_urn(text)
        attr, _, sub = rest.partition(".")
        if not re.fullmatch(r"[A-Za-z][\w$-]*", attr) or \
                (sub and not re.fullmatch(r"[A-Za-z][\w$-]*", sub)):
            raise invalid(f"not an attribute path: {text!r}", "invalidFilter")
        return _Path(urn, attr, sub or None)

    def attr_expr(self) -> Node:
        _, word = self.take("word")
        path = self.path(word)
        tok = self.peek()
        if tok and tok[0] == "lbr":
            self.take("lbr")
            inner = self.or_()
            self.take("rbr")
            return ValuePath(path, inner)
        op = self.keyword("pr", *_COMPARE)
        if op is None:
            raise invalid(f"expected an operator after {word!r}", "invalidFilter")
        if op == "pr":
            return Compare(path, "pr")
        kind, raw = self.take()
        if kind == "string":
            try:
                value: Any = json.loads(raw)
            except ValueError as exc:
                raise invalid("a filter string is malformed", "invalidFilter") from exc
        elif kind == "word" and raw.lower() in {"true", "false", "null"}:
            value = {"true": True, "false": False, "null": None}[raw.lower()]
        elif kind == "word":
            try:
                value = float(raw) if any(c in raw for c in ".eE") else int(raw)
            except ValueError as exc:
                raise invalid(f"not a filter value: {raw!r}", "invalidFilter") from exc
        else:
            raise invalid("expected a value in the filter", "invalidFilter")
        return Compare(path, op, value)


def parse_filter(text: str, schema: UserSchema = SCHEMA) -> Node:
    """Parse a SCIM filter; ScimError(400, invalidFilter) if it is not one."""
    if not text.strip():
        raise invalid("the filter is empty", "invalidFilter")
    return _Parser(text, schema).parse()


def _values(container: Mapping[str, Any], attrs: Mapping[str, Attr], path: _Path
            ) -> tuple[list[Any], Attr | None]:
    attr = attrs.get(path.attr.lower())
    if attr is None:
        return [], None
    value = container.get(attr.name)
    if value is None:
        return [], attr
    items = value if isinstance(value, list) else [value]
    if path.sub is None:
        if attr.type == "complex" and attr.multi:
            # A bare multi-valued complex attribute compares by its "value" sub-attribute.
            sub = attr.sub.get("value")
            return [i.get("value") for i in items if isinstance(i, dict)], sub
        return items, attr
    sub_attr = attr.sub.get(path.sub.lower())
    if sub_attr is None:
        return [], None
    return [i.get(sub_attr.name) for i in items if isinstance(i, dict)
            and i.get(sub_attr.name) is not None], sub_attr


def _compare(op: str, actual: Any, expected: Any, case_exact: bool) -> bool:
    if isinstance(actual, str) and isinstance(expected, str):
        if not case_exact:
            actual, expected = actual.lower(), expected.lower()
        if op == "co":
            return expected in actual
        if op == "sw":
            return actual.startswith(expected)
        if op == "ew":
            return actual.endswith(expected)
    if op == "eq":
        if isinstance(actual, bool) != isinstance(expected, bool):
            return False  # true is not 1
        return bool(actual == expected)
    if op == "ne":
        return not _compare("eq", actual, expected, case_exact)
    if op in {"gt", "ge", "lt", "le"}:
        if isinstance(actual, bool) or isinstance(expected, bool) or expected is None:
            raise invalid(f"{op} does not compare booleans or null", "invalidFilter")
        try:
            return bool({"gt": actual > expected, "ge": actual >= expected,
                         "lt": actual < expected, "le": actual <= expected}[op])
        except TypeError:
            return False
    return False


def _eval(node: Node, container: Mapping[str, Any], attrs: Mapping[str, Attr],
          extensions: Mapping[str, Mapping[str, Attr]]) -> bool:
    if isinstance(node, Logical):
        left = _eval(node.left, container, attrs, extensions)
        if node.op == "and":
            return left and _eval(node.right, container, attrs, extensions)
        return left or _eval(node.right, container, attrs, extensions)
    if isinstance(node, Not):
        return not _eval(node.inner, container, attrs, extensions)
    scope, scope_attrs = container, attrs
    if node.path.urn is not None:
        if node.path.urn not in extensions:
            return False
        scope, scope_attrs = container.get(node.path.urn) or {}, extensions[node.path.urn]
    if isinstance(node, ValuePath):
        attr = scope_attrs.get(node.path.attr.lower())
        if attr is None or attr.type != "complex":
            return False
        items = scope.get(attr.name) or []
        items = items if isinstance(items, list) else [items]
        return any(_eval(node.inner, item, attr.sub, {}) for item in items
                   if isinstance(item, dict))
    values, attr = _values(scope, scope_attrs, node.path)
    if node.op == "pr":
        return any(v not in (None, "", [], {}) for v in values)
    case_exact = attr.case_exact if attr else False
    if node.value is None:
        return not values if node.op == "eq" else bool(values) if node.op == "ne" else False
    if node.op == "ne":
        return not any(_compare("eq", v, node.value, case_exact) for v in values)
    return any(_compare(node.op, v, node.value, case_exact) for v in values)


def matches(node: Node, user: Mapping[str, Any], schema: UserSchema = SCHEMA) -> bool:
    return _eval(node, user, schema.core, schema.extensions)


# ---- PATCH (RFC 7644 section 3.5.2) ----------------------------------------------------

_PATH_RE = re.compile(r"^(?P<attr>[A-Za-z][\w$-]*)(?:\[(?P<filter>.*)\])?"
                      r"(?:\.(?P<sub>[A-Za-z][\w$-]*))?$", re.DOTALL)


@dataclass(frozen=True)
class _Target:
    urn: str | None
    attr: Attr | None  # None: the whole extension named by urn
    filter: Node | None = None
    sub: Attr | None = None


def _target(path: str, schema: UserSchema) -> _Target | None:
    """Where a PATCH path points; None for an attribute Gatepass does not keep."""
    if not isinstance(path, str) or not path.strip() or len(path) > MAX_FILTER_LENGTH:
        raise invalid("path must be a non-empty attribute path", "invalidPath")
    urn, rest = schema.split_urn(path.strip())
    if urn is not None and rest == "":
        return _Target(urn, None)
    if rest == "" and urn is None:
        raise invalid(f"path {path!r} names the whole resource", "invalidPath")
    m = _PATH_RE.fullmatch(rest)
    if m is None:
        if path.lower().startswith("urn:"):
            return None  # an extension Gatepass does not keep
        raise invalid(f"not an attribute path: {path!r}", "invalidPath")
    attrs = schema.attrs(urn)
    attr = attrs.get(m["attr"].lower())
    if attr is None:
        return None
    sub = None
    if m["sub"]:
        if attr.type != "complex":
            raise invalid(f"{attr.name} has no sub-attributes", "invalidPath")
        sub = attr.sub.get(m["sub"].lower())
        if sub is None:
            return None
    node = None
    if m["filter"] is not None:
        if not (attr.multi and attr.type == "complex"):
            raise invalid(f"{attr.name} is not a multi-valued complex attribute",
                          "invalidPath")
        node = _Parser(m["filter"], schema).parse()
    return _Target(urn, attr, node, sub)


def _equalities(node: Node) -> dict[str, Any] | None:
    """{sub: value} when the filter is only `eq` comparisons joined by `and`, else None."""
    if isinstance(node, Compare) and node.op == "eq" and node.path.sub is None \
            and node.path.urn is None and node.value is not None:
        return {node.path.attr: node.value}
    if isinstance(node, Logical) and node.op == "and":
        left, right = _equalities(node.left), _equalities(node.right)
        if left is not None and right is not None:
            return {**left, **right}
    return None


def _merge(old: Any, new: Any) -> Any:
    if isinstance(old, dict) and isinstance(new, dict):
        return {**old, **new}
    return new


def _set(container: dict[str, Any], key: str, value: Any) -> None:
    if value is None or value == [] or value == {}:
        container.pop(key, None)
    else:
        container[key] = value


def _apply(op: str, target: _Target, value: Any, user: dict[str, Any],
           schema: UserSchema) -> None:
    if target.attr is None:  # the whole extension
        urn = target.urn or ""
        if op == "remove":
            user.pop(urn, None)
            return
        if not isinstance(value, dict):
            raise invalid(f"the value for {urn} must be an object")
        ext = _normalize_attrs(schema.extensions[urn], value, f"{urn}:")
        base = dict(user.get(urn) or {})
        for key, inner in ext.items():
            attr = schema.extensions[urn][key.lower()]
            base[key] = _add_value(attr, base.get(key), inner) if op == "add" \
                else _merge(base.get(key), inner)
        _set(user, urn, base)
        return
    attr = target.attr
    if not attr.writable:
        raise invalid(f"{attr.name} is read-only", "mutability")
    container: dict[str, Any] = user if target.urn is None else \
        dict(user.get(target.urn) or {})
    name = attr.name
    if target.filter is None and target.sub is None:
        if op == "remove" or value is None:
            container.pop(name, None)
        elif op == "add":
            new = normalize_value(attr, value if not attr.multi or isinstance(value, list)
                                  else [value], name)
            _set(container, name, _add_value(attr, container.get(name), new))
        else:
            new = normalize_value(attr, value if not attr.multi or isinstance(value, list)
                                  else [value], name)
            _set(container, name, new if attr.multi else _merge(container.get(name), new))
    elif target.filter is None and target.sub is not None:
        sub = target.sub
        if attr.multi:
            items = [dict(i) for i in container.get(name) or []]
            if not items and op != "remove" and value is not None:
                items = [{}]
            for item in items:
                _set(item, sub.name, None if op == "remove" else
                     normalize_value(sub, value, f"{name}.{sub.name}"))
            _set(container, name, [i for i in items if i])
        else:
            obj = dict(container.get(name) or {})
            _set(obj, sub.name, None if op == "remove" else
                 normalize_value(sub, value, f"{name}.{sub.name}"))
            _set(container, name, obj)
    else:
        assert target.filter is not None
        items = [dict(i) for i in container.get(name) or []]
        hits = [i for i in items if _eval(target.filter, i, attr.sub, {})]
        if not hits and op != "remove":
            seed = _equalities(target.filter)
            if seed is None:
                raise invalid(f"no value of {name} matches the filter", "noTarget")
            seeded = _single(attr, seed, name) or {}
            items.append(seeded)
            hits = [seeded]
        for item in hits:
            if op == "remove":
                if target.sub is None:
                    item.clear()
                else:
                    item.pop(target.sub.name, None)
            elif target.sub is not None:
                _set(item, target.sub.name,
                     normalize_value(target.sub, value, f"{name}.{target.sub.name}"))
            else:
                new = _single(attr, value, name)
                if new:
                    item.update(new)
        _set(container, name, [i for i in items if i])
    if target.urn is not None:
        _set(user, target.urn, container)


def _add_value(attr: Attr, old: Any, new: Any) -> Any:
    if attr.multi:
        merged = list(old or [])
        for item in new or []:
            if item not in merged:
                merged.append(item)
        return merged or None
    return _merge(old, new)


def apply_patch(user: Mapping[str, Any], body: Any, schema: UserSchema = SCHEMA
                ) -> dict[str, Any]:
    """The user after a PatchOp request (a new dict); ScimError if the request is invalid."""
    if not isinstance(body, dict):
        raise invalid("the body must be a JSON object", "invalidSyntax")
    schemas = body.get("schemas")
    if not isinstance(schemas, list) or PATCH_URN.lower() not in \
            {s.lower() for s in schemas if isinstance(s, str)}:
        raise invalid(f"schemas must list {PATCH_URN}", "invalidSyntax")
    ops = next((v for k, v in body.items() if k.lower() == "operations"), None)
    if not isinstance(ops, list) or not ops:
        raise invalid("Operations must be a non-empty list", "invalidSyntax")
    if len(ops) > MAX_OPERATIONS:
        raise invalid(f"more than {MAX_OPERATIONS} operations", "tooMany")
    out = copy.deepcopy(dict(user))
    for n, raw in enumerate(ops):
        if not isinstance(raw, dict):
            raise invalid(f"Operations[{n}] must be an object", "invalidSyntax")
        fields_ = {k.lower(): v for k, v in raw.items()}
        op = fields_.get("op")
        if not isinstance(op, str) or op.lower() not in {"add", "replace", "remove"}:
            raise invalid(f"Operations[{n}].op must be add, replace or remove",
                          "invalidSyntax")
        op = op.lower()
        path, value = fields_.get("path"), fields_.get("value")
        if path is None:
            if op == "remove":
                raise invalid(f"Operations[{n}]: remove needs a path", "noTarget")
            if not isinstance(value, dict):
                raise invalid(f"Operations[{n}].value must be an object when there is "
                              "no path", "invalidValue")
            for key, inner in value.items():
                if key.lower() in {"schemas", "id", "meta"}:
                    continue  # read-only members of a whole-resource value are ignored
                target = _target(key, schema)
                if target is not None:
                    _apply(op, target, inner, out, schema)
            continue
        target = _target(path, schema)
        if target is not None:
            _apply(op, target, value, out, schema)
    check_user(out)
    return out


# ---- attribute projection (RFC 7644 section 3.4.2.5, 3.9) -------------------------------

_ALWAYS = {"id", "schemas"}


def _parse_attribute_list(text: str, schema: UserSchema
                          ) -> list[tuple[str | None, str, str | None]]:
    out: list[tuple[str | None, str, str | None]] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        urn, rest = schema.split_urn(part)
        if urn is not None and rest == "":
            out.append((urn, "", None))
            continue
        attr, _, sub = rest.partition(".")
        attrs = schema.attrs(urn)
        found = attrs.get(attr.lower())
        if found is None:
            continue
        sub_name = None
        if sub:
            sub_attr = found.sub.get(sub.lower())
            if sub_attr is None:
                continue
            sub_name = sub_attr.name
        out.append((urn, found.name, sub_name))
    return out


def project(rendered: Mapping[str, Any], attributes: str | None, excluded: str | None,
            schema: UserSchema = SCHEMA) -> dict[str, Any]:
    """Keep only `attributes` (plus id, schemas), or drop `excluded` (never id)."""
    if attributes:
        wanted = _parse_attribute_list(attributes, schema)
        out: dict[str, Any] = {k: v for k, v in rendered.items() if k in _ALWAYS}
        for urn, name, sub in wanted:
            source: Mapping[str, Any] = rendered if urn is None else rendered.get(urn) or {}
            if name == "":
                if urn in rendered:
                    out[urn or ""] = rendered[urn or ""]
                continue
            if name not in source:
                continue
            value = source[name]
            if sub is not None:
                value = [{sub: i[sub]} for i in value if sub in i] if isinstance(value, list) \
                    else ({sub: value[sub]} if sub in value else None)
                if not value:
                    continue
            dest = out if urn is None else out.setdefault(urn, {})
            dest[name] = _merge(dest.get(name), value) if not isinstance(value, list) \
                else value
        return out
    out = copy.deepcopy(dict(rendered))
    if excluded:
        for urn, name, sub in _parse_attribute_list(excluded, schema):
            if name in _ALWAYS:
                continue
            if name == "":
                out.pop(urn or "", None)
                continue
            dest = out if urn is None else out.get(urn) or {}
            if sub is None:
                dest.pop(name, None)
            elif isinstance(dest.get(name), list):
                for item in dest[name]:
                    item.pop(sub, None)
            elif isinstance(dest.get(name), dict):
                dest[name].pop(sub, None)
    return out
