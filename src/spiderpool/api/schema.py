"""Generate Kubernetes structural OpenAPI v3 schemas from typed dataclass models.

A model field is a dataclass field whose type may be wrapped in ``Annotated[T, F(...)]``; ``F``
carries what the type alone cannot say (description, bounds, enum, pattern, CEL rules, defaults).
Fields without a default are required. This keeps the Python models the single source of truth
for the CRD manifests.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Union, get_args, get_origin, get_type_hints


@dataclass(frozen=True)
class Rule:
    """A CEL ``x-kubernetes-validations`` entry. ``values`` are CEL expressions (strings) shown in
    the message at its ``{}`` places (a ``messageExpression``); the apiserver itself reports a CEL
    failure with the value's type only, so without them the user never sees what was wrong. The
    plain ``message`` (``{}`` left out) stays for the apiserver to fall back on."""

    rule: str
    message: str
    field_path: str | None = None
    reason: str | None = None
    values: tuple[str, ...] = ()

    def render(self) -> dict[str, Any]:
        full = self.message.replace("[", "").replace("]", "")
        parts = full.split("{}")
        if len(parts) != len(self.values) + 1:
            raise ValueError(f"rule message {self.message!r} has {len(parts) - 1} places for {len(self.values)} values")
        # The plain message is the template without its places (each written " {}") and without the
        # text in [brackets] (which only reads well with the values).
        plain = re.sub(r"\[[^\]]*\]", "", self.message).replace(" {}", "").replace("{}", "").strip()
        out: dict[str, Any] = {"rule": self.rule, "message": plain}
        if self.values:
            pieces = [_cel_string(parts[0])]
            for value, text in zip(self.values, parts[1:], strict=True):
                pieces += [value, _cel_string(text)]
            out["messageExpression"] = " + ".join(p for p in pieces if p != "''")
        if self.field_path:
            out["fieldPath"] = self.field_path
        if self.reason:
            out["reason"] = self.reason
        return out


def _cel_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass(frozen=True)
class F:
    """Schema facts about one field (or, with ``items``, about the items of a list field)."""

    description: str = ""
    enum: tuple[Any, ...] | None = None
    pattern: str | None = None
    minimum: int | None = None
    maximum: int | None = None
    max_length: int | None = None
    min_items: int | None = None
    max_items: int | None = None
    rules: tuple[Rule, ...] = ()
    default: Any = None
    format: str | None = None
    preserve_unknown: bool = False
    #: drop every ``default`` of the (object) type's schema: where an absent field must stay absent,
    #: e.g. so that a value given elsewhere (a cluster-wide default) still applies
    no_defaults: bool = False
    #: schema facts for the items of a list (or values of a map)
    items: F | None = None


def merge(*metas: F) -> F | None:
    """Combine facts from nested ``Annotated`` layers: later values win, rules accumulate."""
    if not metas:
        return None
    out = metas[0]
    for m in metas[1:]:
        changes: dict[str, Any] = {}
        for fld in dataclasses.fields(F):
            value = getattr(m, fld.name)
            if fld.name == "rules":
                changes["rules"] = tuple(dict.fromkeys((*out.rules, *m.rules)))
            elif value not in (None, "", False):
                changes[fld.name] = value
        out = dataclasses.replace(out, **changes)
    return out


def _unwrap_optional(tp: Any) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _apply(schema: dict[str, Any], f: F | None) -> dict[str, Any]:
    if f is None:
        return schema
    if f.description:
        schema["description"] = f.description
    for key, value in (
        ("enum", list(f.enum) if f.enum is not None else None),
        ("pattern", f.pattern),
        ("minimum", f.minimum),
        ("maximum", f.maximum),
        ("maxLength", f.max_length),
        ("minItems", f.min_items),
        ("maxItems", f.max_items),
        ("default", f.default),
        ("format", f.format),
    ):
        if value is not None:
            schema[key] = value
    if f.preserve_unknown:
        schema["x-kubernetes-preserve-unknown-fields"] = True
    if f.rules:
        schema["x-kubernetes-validations"] = [r.render() for r in f.rules]
    return schema


def schema_for(tp: Any, f: F | None = None) -> dict[str, Any]:
    """The structural schema of a type (dataclass, list, dict, or scalar)."""
    tp = _unwrap_optional(tp)
    if get_origin(tp) is typing.Annotated:
        base, *extra = get_args(tp)
        metas = [m for m in extra if isinstance(m, F)]
        return schema_for(base, merge(*metas, *([f] if f else [])))
    origin = get_origin(tp)
    if origin is list:
        (item,) = get_args(tp)
        return _apply({"type": "array", "items": schema_for(item, f.items if f else None)}, f)
    if origin is dict:
        _, value = get_args(tp)
        return _apply({"type": "object", "additionalProperties": schema_for(value, f.items if f else None)}, f)
    if tp is str:
        return _apply({"type": "string"}, f)
    if tp is bool:
        return _apply({"type": "boolean"}, f)
    if tp is int:
        return _apply({"type": "integer", "format": "int64"}, f)
    if tp is Any:
        return _apply({"type": "object", "x-kubernetes-preserve-unknown-fields": True}, f)
    if dataclasses.is_dataclass(tp):
        schema = object_schema(tp)
        if f is not None and f.no_defaults:
            _drop_defaults(schema)
        return _apply(schema, f)
    raise TypeError(f"no schema mapping for {tp!r}")


def _drop_defaults(schema: dict[str, Any]) -> None:
    schema.pop("default", None)
    for sub in schema.get("properties", {}).values():
        _drop_defaults(sub)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            _drop_defaults(schema[key])


def object_schema(cls: Any) -> dict[str, Any]:
    hints = get_type_hints(cls, include_extras=True)
    props: dict[str, Any] = {}
    required: list[str] = []
    for field in dataclasses.fields(cls):
        name = field.metadata.get("json", field.name)
        props[name] = schema_for(hints[field.name])
        if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            required.append(name)
    out: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        out["required"] = required
    doc = (cls.__doc__ or "").strip()
    if doc and not doc.startswith(cls.__name__ + "("):
        out["description"] = " ".join(doc.split())
    rules: tuple[Rule, ...] = getattr(cls, "__rules__", ())
    if rules:
        out["x-kubernetes-validations"] = [r.render() for r in rules]
    return out
