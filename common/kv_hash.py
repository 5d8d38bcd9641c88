"""KV block hashing shared by the engine (prefix cache) and the router (prefix-aware routing).

Both sides must hash alike, so this is the only implementation. A block's hash chains its
parent's hash, an optional extra key (anything else that changes KV, e.g. a LoRA id) and the
block's token ids; only full blocks are hashed. blake2b is stable across processes and
machines, unlike Python's salted hash().
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence

HASH_BYTES = 8
_ROOT = b"\x00" * HASH_BYTES


def adapter_extra_key(adapter_name: str | None) -> str | None:
    """The extra key of KV computed with a LoRA adapter (None: the base model), so that two
    adapters, or an adapter and the base model, never share blocks."""
    return f"lora:{adapter_name}" if adapter_name else None


def hash_block(
    parent_hash: int | None, token_ids: Sequence[int], extra_key: str | None = None
) -> int:
    """Hash one block of token ids chained onto its parent's hash (None for the first block)."""
    digest = hashlib.blake2b(digest_size=HASH_BYTES)
    digest.update(_ROOT if parent_hash is None else parent_hash.to_bytes(HASH_BYTES, "little"))
    if extra_key:
        digest.update(extra_key.encode())
        digest.update(b"\xff")
    digest.update(array("I", token_ids).tobytes())
    return int.from_bytes(digest.digest(), "little")


def block_hashes(
    token_ids: Sequence[int],
    block_size: int,
    extra_key: str | None = None,
    parent_hash: int | None = None,
) -> list[int]:
    """Chained hashes of every full block of token_ids (a trailing partial block is skipped)."""
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    hashes: list[int] = []
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent_hash = hash_block(parent_hash, token_ids[start : start + block_size], extra_key)
        hashes.append(parent_hash)
    return hashes
