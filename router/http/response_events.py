"""Responses streaming events as data: read back from the SSE frames a run produces, folded
into the output so far (what a poll of a running background response shows), and written
out again as frames from their stored JSON."""

from __future__ import annotations

import copy
import json
from typing import Any


def decode_frame(frame: bytes) -> dict[str, Any]:
    """The event of one SSE frame (`event: type` and one `data: json` line)."""
    for line in frame.decode().splitlines():
        if line.startswith("data: "):
            event: dict[str, Any] = json.loads(line[len("data: ") :])
            return event
    raise ValueError("an SSE frame without data")


def frame_of(event_type: str, json_text: str) -> bytes:
    """An SSE frame from an event's stored JSON (not encoded again)."""
    return f"event: {event_type}\ndata: {json_text}\n\n".encode()


class OutputSoFar:
    """The output items as the events build them: items as they are added and done, text
    and arguments grown by their deltas. Events of other kinds (tool progress) leave the
    items as they are until their `output_item.done` brings the finished item."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def apply(self, event: dict[str, Any]) -> None:
        kind = str(event.get("type", ""))
        index = event.get("output_index")
        if not isinstance(index, int) or index < 0:
            return
        if kind in ("response.output_item.added", "response.output_item.done"):
            while len(self.items) <= index:
                self.items.append({})
            self.items[index] = copy.deepcopy(event["item"])
            return
        if index >= len(self.items):
            return
        item = self.items[index]
        if kind in ("response.content_part.added", "response.content_part.done"):
            parts = item.setdefault("content", [])
            content_index = int(event.get("content_index", 0))
            while len(parts) <= content_index:
                parts.append({})
            parts[content_index] = copy.deepcopy(event["part"])
        elif kind in ("response.output_text.delta", "response.reasoning_text.delta"):
            parts = item.get("content") or []
            content_index = int(event.get("content_index", 0))
            if content_index < len(parts):
                parts[content_index]["text"] = parts[content_index].get("text", "") + str(
                    event.get("delta", "")
                )
        elif kind == "response.function_call_arguments.delta":
            item["arguments"] = item.get("arguments", "") + str(event.get("delta", ""))
