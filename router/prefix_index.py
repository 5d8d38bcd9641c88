"""Which replica holds which KV block: `block hash -> replicas`, folded from the engines' events.

The engines hash full blocks with `common.kv_hash` (chained, so one hash names a whole
prefix); this index keeps, per hash, a bit mask of the replica slots that hold the block.
Matching a prompt walks its chain of block hashes and stops at the first block no
replica holds, so a routing decision hashes only as far as some replica could help.
The index is bounded: past `max_blocks` the least recently stored hashes are dropped.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence

from oss_serve.common.kv_hash import hash_block


class PromptBlocks:
    """Chained block hashes of one prompt, computed lazily and cached."""

    __slots__ = ("_hashes", "_token_ids", "block_size", "extra_key", "num_blocks")

    def __init__(
        self, token_ids: Sequence[int], block_size: int, extra_key: str | None = None
    ) -> None:
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self._token_ids = token_ids
        self.block_size = block_size
        self.extra_key = extra_key
        self.num_blocks = len(token_ids) // block_size
        self._hashes: list[int] = []

    @property
    def num_tokens(self) -> int:
        return len(self._token_ids)

    def __len__(self) -> int:
        return self.num_blocks

    def __iter__(self) -> Iterator[int]:
        for index in range(self.num_blocks):
            yield self.hash_at(index)

    def hash_at(self, index: int) -> int:
        hashes = self._hashes
        while len(hashes) <= index:
            start = len(hashes) * self.block_size
            parent = hashes[-1] if hashes else None
            block = self._token_ids[start : start + self.block_size]
            hashes.append(hash_block(parent, block, self.extra_key))
        return hashes[index]

    def all(self) -> list[int]:
        if self.num_blocks:
            self.hash_at(self.num_blocks - 1)
        return list(self._hashes)


def _bits(mask: int) -> Iterator[int]:
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


class PrefixIndex:
    """block hash -> bit mask of replica slots; per-replica block counts for tie-breaking."""

    def __init__(self, max_blocks: int = 1 << 20) -> None:
        if max_blocks <= 0:
            raise ValueError(f"max_blocks must be positive, got {max_blocks}")
        self.max_blocks = max_blocks
        self._blocks: OrderedDict[int, int] = OrderedDict()
        self._slots: dict[str, int] = {}
        self._replica_of_slot: dict[int, str] = {}
        self._free_slots: list[int] = []
        self._block_counts: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._blocks)

    @property
    def replicas(self) -> list[str]:
        return list(self._slots)

    def slot(self, replica_id: str) -> int:
        """The replica's bit position (assigned on first use, reused after `clear`)."""
        slot = self._slots.get(replica_id)
        if slot is None:
            slot = self._free_slots.pop() if self._free_slots else len(self._slots)
            self._slots[replica_id] = slot
            self._replica_of_slot[slot] = replica_id
            self._block_counts[slot] = 0
        return slot

    def block_count(self, replica_id: str) -> int:
        slot = self._slots.get(replica_id)
        return 0 if slot is None else self._block_counts[slot]

    def store(self, replica_id: str, block_hashes: Iterable[int]) -> None:
        bit = 1 << self.slot(replica_id)
        blocks = self._blocks
        added = 0
        for block_hash in block_hashes:
            mask = blocks.get(block_hash, 0)
            if not mask & bit:
                added += 1
            blocks[block_hash] = mask | bit
            blocks.move_to_end(block_hash)
        self._block_counts[bit.bit_length() - 1] += added
        while len(blocks) > self.max_blocks:
            _, mask = blocks.popitem(last=False)
            for slot in _bits(mask):
                self._block_counts[slot] -= 1

    def remove(self, replica_id: str, block_hashes: Iterable[int]) -> None:
        slot = self._slots.get(replica_id)
        if slot is None:
            return
        bit = 1 << slot
        blocks = self._blocks
        removed = 0
        for block_hash in block_hashes:
            mask = blocks.get(block_hash, 0)
            if mask & bit:
                removed += 1
                if mask == bit:
                    del blocks[block_hash]
                else:
                    blocks[block_hash] = mask & ~bit
        self._block_counts[slot] -= removed

    def clear(self, replica_id: str) -> None:
        """Forget every block of a replica (it died or restarted with an empty cache)."""
        slot = self._slots.pop(replica_id, None)
        if slot is None:
            return
        bit = 1 << slot
        blocks = self._blocks
        for block_hash in [h for h, mask in blocks.items() if mask & bit]:
            mask = blocks[block_hash] & ~bit
            if mask:
                blocks[block_hash] = mask
            else:
                del blocks[block_hash]
        del self._block_counts[slot]
        del self._replica_of_slot[slot]
        self._free_slots.append(slot)

    def match(self, prompt: Iterable[int]) -> dict[str, int]:
        """Leading blocks of `prompt` (its chained hashes) that each replica holds, by replica id.

        Replicas that hold none are left out. Stops hashing at the first block nobody holds.
        """
        blocks = self._blocks
        active = -1  # every slot
        matched: dict[int, int] = {}
        depth = 0
        for block_hash in prompt:
            mask = blocks.get(block_hash, 0) & active
            if depth and mask != active:
                for slot in _bits(active & ~mask):
                    matched[slot] = depth
            active = mask
            if not active:
                break
            depth += 1
        if active and depth:
            for slot in _bits(active):
                matched[slot] = depth
        replica_of = self._replica_of_slot
        return {replica_of[slot]: count for slot, count in matched.items()}
