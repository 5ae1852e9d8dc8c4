"""Tool JSON schema cleaning for backends that accept only a subset of JSON Schema (Gemini).

Gemini's function declarations take an OpenAPI 3.0 subset (the fields of LiteLLM's vertex `Schema` type:
type, format, title, description, nullable, enum, items, min/maxItems, properties, propertyOrdering, required,
min/maxProperties, minimum, maximum, min/maxLength, pattern, anyOf). Everything else (`$schema`,
`additionalProperties`, `default`, `examples`, `const`, `$ref`/`$defs`, `oneOf`/`allOf`, `exclusiveMinimum`, ...)
makes the request fail there. String `format` is kept only for "enum" and "date-time".

The cleaner is a pure function returning a new schema (the input, owned by the parsed request, is not mutated).
`$ref`s to `#/$defs/...` or `#/definitions/...` are inlined (bounded depth: a recursive schema is cut to a
plain object), `const` becomes a one-value `enum`, a type list `["x", "null"]` becomes `type: x` plus
`nullable: true`, `anyOf` with a `{"type": "null"}` branch becomes `nullable`, and `oneOf` is treated as
`anyOf`.
"""

from __future__ import annotations

from typing import Any

_KEEP = frozenset(
    {
        "type",
        "format",
        "title",
        "description",
        "nullable",
        "enum",
        "items",
        "minItems",
        "maxItems",
        "properties",
        "propertyOrdering",
        "required",
        "minProperties",
        "maxProperties",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "pattern",
        "anyOf",
    }
)
_STRING_FORMATS = frozenset({"enum", "date-time"})
_MAX_DEPTH = 24


def clean_schema_for_gemini(schema: dict[str, Any]) -> dict[str, Any]:
    defs: dict[str, Any] = {}
    for key in ("$defs", "definitions"):
        d = schema.get(key)
        if isinstance(d, dict):
            defs.update({f"#/{key}/{name}": v for name, v in d.items()})
    out = _clean(schema, defs, 0)
    if out.get("type") != "object":
        out["type"] = "object"
    return out


def _resolve(node: dict[str, Any], defs: dict[str, Any], depth: int) -> dict[str, Any]:
    ref = node.get("$ref")
    seen = 0
    while isinstance(ref, str) and seen < 8:
        target = defs.get(ref)
        if not isinstance(target, dict):
            break
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        node = merged
        ref = target.get("$ref")
        seen += 1
    return node


def _clean(node: Any, defs: dict[str, Any], depth: int) -> dict[str, Any]:
    if not isinstance(node, dict):
        return {}
    if depth > _MAX_DEPTH:
        return {"type": "object"}
    node = _resolve(node, defs, depth)
    out: dict[str, Any] = {}

    t = node.get("type")
    if isinstance(t, list):
        types = [x for x in t if x != "null"]
        if len(types) < len(t):
            out["nullable"] = True
        if len(types) == 1:
            out["type"] = types[0]
        elif types:
            # Several non-null types: an anyOf of simple types.
            out["anyOf"] = [{"type": x} for x in types]
    elif isinstance(t, str):
        out["type"] = t

    if "const" in node and "enum" not in node:
        out["enum"] = [node["const"]]

    branches = node.get("anyOf") or node.get("oneOf")
    if isinstance(branches, list):
        cleaned = []
        for b in branches:
            if isinstance(b, dict) and b.get("type") == "null":
                out["nullable"] = True
                continue
            cleaned.append(_clean(b, defs, depth + 1))
        if len(cleaned) == 1 and "type" not in out:
            out.update(cleaned[0])
        elif cleaned:
            out["anyOf"] = cleaned
    all_of = node.get("allOf")
    if isinstance(all_of, list):
        for b in all_of:  # merge simple allOf branches
            c = _clean(b, defs, depth + 1)
            props = c.pop("properties", None)
            req = c.pop("required", None)
            for k, v in c.items():
                out.setdefault(k, v)
            if props:
                out.setdefault("properties", {}).update(props)
            if req:
                out.setdefault("required", []).extend(r for r in req if r not in out["required"])

    for key, value in node.items():
        if key not in _KEEP or key in ("type", "anyOf"):
            continue
        if key == "properties":
            if isinstance(value, dict):
                props = out.setdefault("properties", {})
                for name, sub in value.items():
                    props[name] = _clean(sub, defs, depth + 1)
        elif key == "items":
            if isinstance(value, dict):
                out["items"] = _clean(value, defs, depth + 1)
        elif key == "format":
            if value in _STRING_FORMATS:
                out["format"] = value
        elif key == "required":
            if isinstance(value, list):
                out.setdefault("required", []).extend(r for r in value if r not in out.get("required", ()))
        else:
            out[key] = value

    if "properties" in out:
        out["type"] = "object"
        if not out["properties"]:
            del out["properties"]
            out.pop("required", None)
        elif "required" in out:
            out["required"] = [r for r in out["required"] if r in out["properties"]]
            if not out["required"]:
                del out["required"]
    elif out.get("type") == "object":
        out.pop("required", None)
    if out.get("type") == "array" and "items" not in out:
        out["items"] = {"type": "string"}
    if "enum" in out:
        # Gemini takes enums on strings only; a non-string enum becomes a hint in the description.
        values = [v for v in out["enum"] if v is not None]
        out.setdefault("type", "string" if all(isinstance(v, str) for v in values) else out.get("type"))
        if out.get("type") == "string" and all(isinstance(v, str) for v in values):
            out["enum"] = values
        else:
            del out["enum"]
            hint = "one of: " + ", ".join(str(v) for v in values)
            out["description"] = f"{out['description']} ({hint})" if out.get("description") else hint
        if out.get("type") is None:
            del out["type"]
    if not out:
        out["type"] = "object"
    return out
