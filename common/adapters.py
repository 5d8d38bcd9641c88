"""LoRA adapter names and `--lora-modules` values, read alike by the CLI, replicas and routers."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}")


def check_adapter_name(name: str) -> None:
    """Names travel comma-separated in the registry and appear in URLs: keep them plain."""
    if not ADAPTER_NAME.fullmatch(name):
        raise ValueError(
            f"adapter name {name!r}: use 1-128 letters, digits and . _ : / @ + - "
            "(starting with a letter or digit)"
        )


def parse_lora_modules(values: Iterable[str]) -> dict[str, str]:
    """vLLM's `--lora-modules` values, `name=path` or `{"name": ..., "path": ...}`, each
    possibly several separated by spaces -> {name: path}; ValueError names a bad one."""
    modules: dict[str, str] = {}
    for value in values:
        text = value.strip()
        items = [text] if text.startswith("{") else text.split()
        for item in items:
            name, path = _one_module(item)
            check_adapter_name(name)
            if name in modules and modules[name] != path:
                raise ValueError(f"--lora-modules names {name!r} twice, with different paths")
            modules[name] = path
    return modules


def _one_module(item: str) -> tuple[str, str]:
    if item.startswith("{"):
        try:
            body = json.loads(item)
        except ValueError as err:
            raise ValueError(f"--lora-modules {item!r} is not valid JSON: {err}") from err
        if not isinstance(body, dict) or not body.get("name") or not body.get("path"):
            raise ValueError(f'--lora-modules {item!r}: give {{"name": ..., "path": ...}}')
        return str(body["name"]), str(body["path"])
    name, sep, path = item.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"--lora-modules {item!r}: give name=path")
    return name, path
