"""JSON schema -> the TypeScript-like `namespace functions { ... }` block gpt-oss was trained on.

The layout (indents, comments, defaults, where blank lines go) follows openai-harmony's
renderer character for character, because the model saw exactly that text in training.
Schemas are first passed through `schema_normalize.normalize_schema`, which resolves
what that renderer would print as `any` (`$ref`, `anyOf`, `allOf`, null variants); this
module then only has to print a plain schema.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any


@dataclass(frozen=True)
class ToolSpec:
    """One function a namespace offers: its name, description and parameter schema."""

    name: str
    description: str
    parameters: Mapping[str, Any] | None


@dataclass(frozen=True)
class ToolNamespace:
    """A `## name` tool section: `functions` (the request's tools) or a built-in tool."""

    name: str
    description: str | None
    tools: tuple[ToolSpec, ...]


def rust_lines(text: str) -> list[str]:
    """Split like Rust's `str::lines()`: on `\\n`, dropping one `\\r` before it and a final empty line."""
    if not text:
        return []
    *terminated, last = text.split("\n")  # a "\r" is dropped only before a "\n"
    lines = [line[:-1] if line.endswith("\r") else line for line in terminated]
    return [*lines, last] if last else lines


def json_compact(value: Any) -> str:
    """Serialise like Rust's serde_json `to_string` (no spaces; floats printed the way ryu does)."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        # serde_json keeps integers in i64/u64; anything larger becomes an f64.
        return str(value) if -(2**63) <= value < 2**64 else _ryu_float(float(value))
    if isinstance(value, float):
        return _ryu_float(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Mapping):
        items = (f"{json_compact(str(k))}:{json_compact(v)}" for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, Sequence):
        return "[" + ",".join(json_compact(v) for v in value) + "]"
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def _ryu_float(number: float) -> str:
    """Shortest round-trip digits (same as Python's repr) laid out the way ryu formats an f64."""
    if not math.isfinite(number):
        raise ValueError("NaN and infinity are not JSON")
    if number == 0:
        return "-0.0" if math.copysign(1.0, number) < 0 else "0.0"
    sign, digit_tuple, exponent = Decimal(repr(number)).as_tuple()
    digits = "".join(map(str, digit_tuple)).rstrip("0")
    exponent = int(exponent) + len(digit_tuple) - len(digits)
    length = len(digits)
    kk = length + exponent  # 10^(kk-1) <= |v| < 10^kk
    prefix = "-" if sign else ""
    if exponent >= 0 and kk <= 16:
        return f"{prefix}{digits}{'0' * exponent}.0"
    if 0 < kk <= 16:
        return f"{prefix}{digits[:kk]}.{digits[kk:]}"
    if -5 < kk <= 0:
        return f"{prefix}0.{'0' * -kk}{digits}"
    mantissa = digits if length == 1 else f"{digits[0]}.{digits[1:]}"
    return f"{prefix}{mantissa}e{kk - 1}"


def _get(schema: Any, key: str) -> Any:
    """`serde_json::Value::get`: a key of an object, None for anything that is not an object."""
    return schema.get(key) if isinstance(schema, Mapping) else None


def _is_enum(schema: Any) -> bool:
    values = _get(schema, "enum")
    return isinstance(values, list) and len(values) > 0


def _default_comment(schema: Any, default: Any, *, quote_enum_strings: bool) -> str:
    """`default: ...` as the reference prints it: raw strings quoted unless the schema is an enum."""
    if isinstance(default, str) and not _is_enum(schema):
        return f'default: "{default}"'
    if isinstance(default, str) and not quote_enum_strings:
        return f"default: {default}"
    return f"default: {json_compact(default)}"


def _with_nullable(schema: Any, type_text: str) -> str:
    if _get(schema, "nullable") is True and "null" not in type_text:
        return f"{type_text} | null"
    return type_text


def _variant_comments(variant: Any, *, quote_enum_strings: bool, skip_desc: str | None) -> str:
    comments = []
    description = _get(variant, "description")
    if isinstance(description, str) and description != skip_desc:
        comments.append(description)
    if _has_key(variant, "default"):
        default = variant["default"]
        comments.append(_default_comment(variant, default, quote_enum_strings=quote_enum_strings))
    return f" // {' '.join(comments)}" if comments else ""


def _has_key(schema: Any, key: str) -> bool:
    return isinstance(schema, Mapping) and key in schema


def _top_level_one_of(variants: list[Any], indent: str) -> str:
    out = []
    for variant in variants:
        out.append(f"\n{indent} | ")
        out.append(_with_nullable(variant, schema_to_typescript(variant, f"{indent}   ")))
        out.append(_variant_comments(variant, quote_enum_strings=True, skip_desc=None))
    return "".join(out)


def schema_to_typescript(schema: Any, indent: str = "") -> str:
    """The TypeScript-like type of one (normalised) JSON schema."""
    one_of = _get(schema, "oneOf")
    if isinstance(one_of, list):
        return _top_level_one_of(one_of, indent)
    type_value = _get(schema, "type")
    if isinstance(type_value, list):
        names = ["number" if t == "integer" else t for t in type_value if isinstance(t, str)]
        if names:
            return " | ".join(names)
    if not isinstance(type_value, str):
        return "any"
    if type_value == "object":
        return _object_to_typescript(schema, indent)
    if type_value == "string":
        enum_values = _get(schema, "enum")
        if isinstance(enum_values, list):
            quoted = [f'"{v}"' for v in enum_values if isinstance(v, str)]
            if quoted:
                return " | ".join(quoted)
        return "string"
    if type_value in ("number", "integer"):
        return "number"
    if type_value == "boolean":
        return "boolean"
    if type_value == "array":
        if _has_key(schema, "items"):
            return f"{schema_to_typescript(schema['items'], indent)}[]"
        return "Array<any>"
    return "any"


def _object_to_typescript(schema: Mapping[str, Any], indent: str) -> str:
    out = []
    description = schema.get("description")
    if isinstance(description, str):
        out.append(f"{indent}// {description}\n")
    out.append("{\n")
    properties = schema.get("properties")
    if isinstance(properties, Mapping):
        required_list = schema.get("required")
        required = (
            {r for r in required_list if isinstance(r, str)}
            if isinstance(required_list, list)
            else set()
        )
        for key, value in properties.items():
            optional = "" if key in required else "?"
            out.append(_property_to_typescript(str(key), value, optional, indent))
    out.append(f"{indent}}}")
    return "".join(out)


def _property_comments(value: Any, indent: str) -> str:
    out = []
    title = _get(value, "title")
    if isinstance(title, str):
        out.append(f"{indent}// {title}\n{indent}//\n")
    description = _get(value, "description")
    if not _has_key(value, "oneOf") and isinstance(description, str):
        out.append(f"{indent}// {description}\n")
    examples = _get(value, "examples")
    if isinstance(examples, list) and examples:
        out.append(f"{indent}// Examples:\n")
        out.extend(f'{indent}// - "{ex}"\n' for ex in examples if isinstance(ex, str))
    return "".join(out)


def _property_to_typescript(key: str, value: Any, optional: str, indent: str) -> str:
    out = [_property_comments(value, indent)]
    one_of = _get(value, "oneOf")
    if isinstance(one_of, list):
        out.append(_property_one_of(key, value, one_of, optional, indent))
        return "".join(out)
    type_text = _with_nullable(value, schema_to_typescript(value, f"{indent}    "))
    out.append(f"{indent}{key}{optional}: {type_text},")
    if not _has_key(value, "oneOf") and _has_key(value, "default"):
        out.append(f" // {_default_comment(value, value['default'], quote_enum_strings=False)}")
    out.append("\n")
    return "".join(out)


def _property_one_of(
    key: str, value: Mapping[str, Any], variants: list[Any], optional: str, indent: str
) -> str:
    out = []
    description = value.get("description")
    property_desc = description if isinstance(description, str) else None
    first_desc = _get(variants[0], "description") if variants else None
    skip_property_desc = property_desc is not None and first_desc == property_desc
    desc_above = property_desc is not None and not skip_property_desc
    if desc_above:
        out.append(f"{indent}// {property_desc}\n")
    if "default" in value:
        comment = _default_comment(value, value["default"], quote_enum_strings=False)
        out.append(f"{indent}// {comment}\n")
    out.append(f"{indent}{key}{optional}:\n")
    for index, variant in enumerate(variants):
        type_text = _with_nullable(variant, schema_to_typescript(variant, f"{indent}   "))
        skip_desc = property_desc
        if index == 0 and desc_above and isinstance(variant, Mapping):
            # The property's description above stands for the first variant's.
            variant = {k: v for k, v in variant.items() if k != "description"}
        out.append(f"{indent} | {type_text}")
        out.append(_variant_comments(variant, quote_enum_strings=False, skip_desc=skip_desc))
        out.append("\n")
    out.append(f"{indent},\n")
    return "".join(out)


def render_tool_namespace(namespace: ToolNamespace) -> str:
    """One `## name` section: description lines, then `namespace name { ... }` if it has tools."""
    lines = [f"## {namespace.name}\n"]
    if namespace.description is not None:
        for line in rust_lines(namespace.description):
            lines.append(f"// {line}" if namespace.tools else line)
    if namespace.tools:
        lines.append(f"namespace {namespace.name} {{\n")
        for tool in namespace.tools:
            lines.extend(f"// {line}" for line in rust_lines(tool.description))
            if tool.parameters is None:
                lines.append(f"type {tool.name} = () => any;\n")
            else:
                params = schema_to_typescript(tool.parameters, "")
                lines.append(f"type {tool.name} = (_: {params}) => any;\n")
        lines.append(f"}} // namespace {namespace.name}")
    return "\n".join(lines)


def render_tools_section(namespaces: Sequence[ToolNamespace]) -> str:
    """`# Tools` followed by each namespace, in name order (the reference keeps them sorted)."""
    ordered = sorted(namespaces, key=lambda ns: ns.name)
    return "\n\n".join(["# Tools", *(render_tool_namespace(ns) for ns in ordered)])
