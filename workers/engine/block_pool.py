"""The pool of physical KV blocks: a free list in LRU order, and the prefix-hash index.

It knows nothing of requests or layers: a block is an id, a reference count and, once its
KV is computed and full, a key (group index, chained block hash) under which later
requests can find it. Freed blocks keep their key until the allocator needs them again
(least recently freed first), which is what makes a finished request's prefix reusable.
Stores and evictions of blocks in the `event_group` become `KVCacheEvent`s for the router.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

BlockKey = tuple[int, int]  # (kv group index, chained block hash)

NULL_BLOCK_ID = 0  # never allocated; stands for "no block" (e.g. slid out of the window)


@dataclass(eq=False)
class KVBlock:
    block_id: int
    ref_cnt: int = 0
    key: BlockKey | None = None  # set while the block is in the prefix-hash index

    @property
    def is_null(self) -> bool:
        return self.block_id == NULL_BLOCK_ID


@dataclass
class KVCacheEvent:
    """Blocks stored into or removed from the prefix cache (hashes from common.kv_hash)."""

    kind: Literal["stored", "removed"]
    block_hashes: list[int]
    parent_block_hash: int | None = None
    token_ids: list[int] = field(default_factory=list)
    block_size: int = 16
    extra_key: str | None = None


@dataclass
class StoredBlock:
    """What cache_blocks needs to register one block and describe it in an event."""

    block: KVBlock
    block_hash: int
    parent_hash: int | None
    token_ids: Sequence[int]


class BlockPool:
    """Free list (LRU) + hash index over `num_blocks` physical blocks (block 0 is the null block)."""

    def __init__(self, num_blocks: int, *, block_size: int, event_group: int | None = None) -> None:
        if num_blocks < 2:
            raise ValueError(f"the KV pool needs at least 2 blocks, got num_blocks={num_blocks}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.event_group = event_group
        self.blocks = [KVBlock(i) for i in range(num_blocks)]
        self.null_block = self.blocks[NULL_BLOCK_ID]
        self.null_block.ref_cnt = 1  # permanently held
        # head = least recently freed = evicted first
        self._free: OrderedDict[int, KVBlock] = OrderedDict(
            (b.block_id, b) for b in self.blocks[1:]
        )
        self._cached: dict[BlockKey, KVBlock] = {}
        self._events: list[KVCacheEvent] = []

    # --- queries ------------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_usable_blocks(self) -> int:
        return self.num_blocks - 1

    def usage(self) -> float:
        """Fraction of usable blocks held by requests (cached-but-free blocks count as free)."""
        return 1.0 - self.num_free_blocks / self.num_usable_blocks

    def get_cached_block(self, key: BlockKey) -> KVBlock | None:
        return self._cached.get(key)

    # --- allocation ---------------------------------------------------------------------------
    def allocate(self, num_blocks: int) -> list[KVBlock]:
        """Take blocks from the head of the free list, evicting their cached keys."""
        if num_blocks > len(self._free):
            raise RuntimeError(f"asked for {num_blocks} KV blocks, {len(self._free)} are free")
        taken: list[KVBlock] = []
        for _ in range(num_blocks):
            _, block = self._free.popitem(last=False)
            self._evict(block)
            block.ref_cnt = 1
            taken.append(block)
        return taken

    def touch(self, blocks: Iterable[KVBlock]) -> None:
        """Take a reference to blocks found in the cache (revives free ones)."""
        for block in blocks:
            if block.ref_cnt == 0:
                del self._free[block.block_id]
            block.ref_cnt += 1

    def free(self, blocks: Iterable[KVBlock]) -> None:
        """Drop a reference; unreferenced blocks join the free list's tail in the given order."""
        for block in blocks:
            if block.is_null:
                continue
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                self._free[block.block_id] = block
            elif block.ref_cnt < 0:
                raise RuntimeError(f"KV block {block.block_id} freed more often than taken")

    # --- prefix-hash index --------------------------------------------------------------------
    def cache_blocks(
        self, group: int, stored: Sequence[StoredBlock], extra_key: str | None
    ) -> None:
        """Register computed full blocks; a hash already held by another block is left alone."""
        registered: list[StoredBlock] = []
        for item in stored:
            key = (group, item.block_hash)
            if item.block.key is not None or key in self._cached:
                continue
            item.block.key = key
            self._cached[key] = item.block
            registered.append(item)
        if group == self.event_group and registered:
            self._events.append(
                KVCacheEvent(
                    kind="stored",
                    block_hashes=[item.block_hash for item in registered],
                    parent_block_hash=registered[0].parent_hash,
                    token_ids=[t for item in registered for t in item.token_ids],
                    block_size=self.block_size,
                    extra_key=extra_key,
                )
            )

    def _evict(self, block: KVBlock) -> None:
        if block.key is None:
            return
        del self._cached[block.key]
        group, block_hash = block.key
        block.key = None
        if group == self.event_group:
            self._events.append(
                KVCacheEvent(kind="removed", block_hashes=[block_hash], block_size=self.block_size)
            )

    def reset_prefix_cache(self) -> bool:
        """Forget every cached key; refused (False) while any block is still referenced."""
        if self.num_free_blocks != self.num_usable_blocks:
            return False
        for block in list(self._cached.values()):
            self._evict(block)
        return True

    def take_events(self) -> list[KVCacheEvent]:
        events, self._events = self._events, []
        return events
