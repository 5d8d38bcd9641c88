"""Rewrite a JSON schema into the plain shapes the TypeScript renderer can print with types.

openai-harmony prints `any` for `$ref`, `anyOf`, `allOf` and `{"type": "null"}`, which are
what pydantic and most SDKs emit for nested models and `Optional[...]`, so the model would
lose the parameter types. Here:
- `$ref` to `#/...` (usually `#/$defs/X`) is inlined; sibling keys win; a cycle becomes `any`;
- `allOf` is merged into its parent (properties and required are unioned);
- `anyOf` is printed like `oneOf`, the union form the reference renderer has;
- null variants of a union become `nullable: true`, and a union left with one variant is
  collapsed into its parent, so `Optional[str]` prints as `string | null`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from oss_serve.harmony.errors import HarmonyRequestError

MAX_SCHEMA_DEPTH = 64
MAX_SCHEMA_NODES = 20_000


class _Normalizer:
    def __init__(self, root: Any, field: str) -> None:
        self.root = root
        self.field = field
        self.nodes = 0

    def fail(self, problem: str) -> HarmonyRequestError:
        return HarmonyRequestError(self.field, problem)

    def visit(self, node: Any, refs: tuple[str, ...], depth: int) -> Any:
        if not isinstance(node, Mapping):
            return node
        self.nodes += 1
        if depth > MAX_SCHEMA_DEPTH:
            raise self.fail(f"schema is nested deeper than {MAX_SCHEMA_DEPTH} levels")
        if self.nodes > MAX_SCHEMA_NODES:
            raise self.fail(f"schema expands to more than {MAX_SCHEMA_NODES} nodes")
        node = dict(node)
        ref = node.get("$ref")
        if isinstance(ref, str):
            del node["$ref"]
            if ref in refs:
                return self.visit(node, refs, depth + 1)  # recursive model: stays `any`
            target = self.resolve(ref)
            merged = {**target, **node} if isinstance(target, Mapping) else node
            return self.visit(merged, (*refs, ref), depth + 1)
        if isinstance(node.get("allOf"), list):
            return self.visit(self.merge_all_of(node, refs, depth), refs, depth + 1)
        if isinstance(node.get("anyOf"), list) and "oneOf" not in node:
            node["oneOf"] = node.pop("anyOf")
        if isinstance(node.get("oneOf"), list):
            node = self.simplify_union(node, refs, depth)
        if isinstance(node.get("properties"), Mapping):
            node["properties"] = {
                key: self.visit(value, refs, depth + 1) for key, value in node["properties"].items()
            }
        if isinstance(node.get("items"), Mapping):
            node["items"] = self.visit(node["items"], refs, depth + 1)
        return node

    def resolve(self, ref: str) -> Any:
        if not ref.startswith("#"):
            raise self.fail(f"$ref {ref!r} is not local; only '#/...' references are supported")
        target = self.root
        for raw_part in ref[1:].split("/")[1:] if ref != "#" else []:
            part = raw_part.replace("~1", "/").replace("~0", "~")
            if isinstance(target, Mapping) and part in target:
                target = target[part]
            elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
                target = target[int(part)]
            else:
                raise self.fail(f"$ref {ref!r} points to nothing in the schema")
        return target

    def merge_all_of(self, node: dict[str, Any], refs: tuple[str, ...], depth: int) -> Any:
        parts = [self.visit(part, refs, depth + 1) for part in node.pop("allOf")]
        merged: dict[str, Any] = dict(node)
        for part in parts:
            if not isinstance(part, Mapping):
                continue
            for key, value in part.items():
                if key == "properties" and isinstance(value, Mapping):
                    merged["properties"] = {**value, **merged.get("properties", {})}
                elif key == "required" and isinstance(value, list):
                    known = list(merged.get("required", []))
                    merged["required"] = known + [r for r in value if r not in known]
                else:
                    merged.setdefault(key, value)
        return merged

    def simplify_union(
        self, node: dict[str, Any], refs: tuple[str, ...], depth: int
    ) -> dict[str, Any]:
        variants = [self.visit(v, refs, depth + 1) for v in node["oneOf"]]
        non_null = [v for v in variants if not _is_null_schema(v)]
        if len(non_null) == len(variants):
            node["oneOf"] = variants
            return node
        del node["oneOf"]
        node["nullable"] = True
        if len(non_null) == 1 and isinstance(non_null[0], Mapping):
            return {**non_null[0], **node}
        if non_null:
            node["oneOf"] = non_null
        return node


def _is_null_schema(schema: Any) -> bool:
    return isinstance(schema, Mapping) and schema.get("type") == "null"


def normalize_schema(schema: Any, *, field: str) -> Any:
    """The schema with `$ref`/`allOf`/`anyOf`/null unions rewritten; the input is not modified."""
    return _Normalizer(schema, field).visit(schema, (), 0)
