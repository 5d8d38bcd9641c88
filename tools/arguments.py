"""Tool-call arguments as the model writes them: a JSON object, or nothing."""

from __future__ import annotations

import json
from typing import Any


class ArgumentsError(ValueError):
    """The arguments are not a JSON object; the message says which way."""


def json_object(text: str) -> dict[str, Any]:
    """The object `text` holds; empty text is no arguments."""
    if not text.strip():
        return {}
    try:
        arguments = json.loads(text)
    except json.JSONDecodeError as error:
        raise ArgumentsError(f"not JSON ({error.msg})") from error
    if not isinstance(arguments, dict):
        raise ArgumentsError("expected a JSON object")
    return arguments
