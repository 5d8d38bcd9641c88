"""One rule for how much of a tool's output the model reads: at most `max_bytes` of UTF-8,
cut on a character boundary, with a last line that says how much was left out."""

from __future__ import annotations


def truncation_notice(shown_bytes: int, total_bytes: int) -> str:
    return f"\n[output truncated: {shown_bytes} of {total_bytes} bytes shown]"


def cap_text(text: str, max_bytes: int, *, total_bytes: int | None = None) -> str:
    """`text` whole when it fits in `max_bytes`, else its head and a notice, together no
    longer than `max_bytes` (unless the notice alone is longer). `total_bytes` is the size
    of the output `text` was already cut from, when the caller kept only a head of it."""
    encoded = text.encode("utf-8")
    total = max(total_bytes or 0, len(encoded))
    if total <= max_bytes:
        return text
    notice_room = len(truncation_notice(total, total).encode("utf-8"))
    head_bytes = max(0, max_bytes - notice_room)
    head = encoded[:head_bytes].decode("utf-8", errors="ignore")
    return head + truncation_notice(len(head.encode("utf-8")), total)
