"""How one delivery's time with its router ended, which decides how it is acknowledged."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Outcome:
    """done: finished (acknowledge); superseded: the entry is another replica's now (leave
    it); retry: the link broke (handshake again); failed: the request cannot run (tell the
    router, dead-letter); unreachable: the router stayed away (dead-letter)."""

    kind: Literal["done", "superseded", "retry", "failed", "unreachable"]
    reason: str = ""
    invalid: bool = False  # failed because of the request itself (the client's error)
