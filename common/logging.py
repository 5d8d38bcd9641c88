"""Structured logging: JSON lines off a terminal, readable lines on one, secrets redacted.

Use `get_logger(__name__)` everywhere and pass context as keyword fields
(`log.info("replica ready", replica_id=..., kv_blocks=...)`).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any, TextIO

_SECRET_PATTERNS = [
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._\-~+/=]+"),
    re.compile(r"\b(sk-)[A-Za-z0-9_\-]{6,}"),
    re.compile(r"(?i)((?:rediss?|https?)://[^:/@\s]*:)[^@\s]+(?=@)"),
    re.compile(r"(?i)((?:api[_-]?key|password|secret|token)[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+"),
]
_SECRET_FIELD = re.compile(r"(?i)(api[_-]?key|password|secret|token|authorization)")
REDACTED = "***"


def redact(text: str) -> str:
    """Mask anything that looks like a credential inside free text."""
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text


def _safe_fields(fields: dict[str, Any]) -> dict[str, Any]:
    safe: dict[str, Any] = {}
    for key, value in fields.items():
        if _SECRET_FIELD.search(key) and value is not None:
            safe[key] = REDACTED
        elif isinstance(value, str):
            safe[key] = redact(value)
        elif isinstance(value, int | float | bool) or value is None:
            safe[key] = value
        else:
            safe[key] = redact(str(value))
    return safe


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        entry.update(_safe_fields(getattr(record, "fields", {})))
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


class _ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        fields = " ".join(
            f"{k}={v}" for k, v in _safe_fields(getattr(record, "fields", {})).items()
        )
        line = f"{stamp} {record.levelname:<7} {record.name}: {redact(record.getMessage())}"
        if fields:
            line += f"  {fields}"
        if record.exc_info:
            line += "\n" + redact(self.formatException(record.exc_info))
        return line


class StructuredLogger(logging.LoggerAdapter):  # type: ignore[type-arg,unused-ignore]
    """A logger that takes keyword fields: `log.info("msg", key=value)`."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        reserved = {"exc_info", "stack_info", "stacklevel", "extra"}
        fields = {k: kwargs.pop(k) for k in list(kwargs) if k not in reserved}
        extra = dict(kwargs.pop("extra", None) or {})
        extra["fields"] = {**extra.get("fields", {}), **fields}
        kwargs["extra"] = extra
        return msg, kwargs


def get_logger(name: str) -> StructuredLogger:
    return StructuredLogger(logging.getLogger(name), {})


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Install one handler on the root logger; `auto` picks JSON unless the stream is a TTY."""
    stream = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_JsonFormatter() if use_json else _ConsoleFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
