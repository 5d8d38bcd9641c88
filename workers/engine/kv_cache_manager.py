"""Which physical blocks each request holds, per layer group, and prefix-cache lookups.

The narrow API the scheduler uses (as in vLLM v1): `get_computed_blocks` (longest cached
prefix), `allocate_slots` (blocks for the next tokens, or None when the pool is short) and
`free`. allocate_slots registers the blocks that the step will fill, so a request admitted
later in the same step can already share them: the model writes every token's K/V of a
layer before any query of that layer attends. (A request is never preempted in the step
it was scheduled in, so a registered block is always computed.)

Hybrid layout: full-attention layers keep every block; sliding-window layers keep only
the blocks their window can still see, so a long request costs what the full layers
need. A cached prefix of length L is usable only if the full group holds all its blocks
AND the sliding group holds the blocks of the window just before L. Blocks that slide
out of a running request's window are freed at once, except the window before the
prompt's end (and, optionally, every `retention_interval_tokens`): those are kept until
the request ends so that the next turn of a chat, or n > 1 siblings, can hit that
prefix (vLLM lost most such hits under load: vllm#48435).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from oss_serve.workers.engine.admission import AdmissionCapacity, blocks_needed, cdiv
from oss_serve.workers.engine.block_pool import BlockPool, KVBlock, KVCacheEvent, StoredBlock
from oss_serve.workers.engine.kv_cache_spec import KVCacheSpec
from oss_serve.workers.engine.request import Request


@dataclass
class ComputedBlocks:
    """A prefix-cache hit: per-group blocks (null where the window does not reach)."""

    blocks: list[list[KVBlock]]
    num_tokens: int = 0


@dataclass
class _GroupBlocks:
    blocks: list[KVBlock] = field(default_factory=list)  # index = block position
    num_cached: int = 0  # leading positions registered in the hash index
    retained: dict[int, KVBlock] = field(default_factory=dict)  # slid out, kept for reuse


@dataclass
class PrefixCacheStats:
    queries: int = 0  # tokens looked up
    hits: int = 0  # tokens found


class KVCacheManager:
    def __init__(
        self,
        spec: KVCacheSpec,
        num_blocks: int,
        *,
        enable_caching: bool = True,
        retention_interval_tokens: int = 0,
    ) -> None:
        self.spec = spec
        self.block_size = spec.block_size
        self.enable_caching = enable_caching
        if retention_interval_tokens % spec.block_size:
            raise ValueError("retention_interval_tokens must be a multiple of block_size")
        self.retention_interval_blocks = retention_interval_tokens // spec.block_size
        self.pool = BlockPool(
            num_blocks,
            block_size=spec.block_size,
            event_group=spec.primary_group if enable_caching else None,
        )
        self.prefix_stats = PrefixCacheStats()
        self._requests: dict[str, list[_GroupBlocks]] = {}
        # blocks a sliding group must hold for a prefix of L full blocks to be usable
        self._window_blocks = list(spec.window_blocks)

    # --- lookups ------------------------------------------------------------------------------
    def get_computed_blocks(self, request: Request) -> ComputedBlocks:
        """The longest prefix (whole blocks, at least one token left to compute) in the cache."""
        empty = ComputedBlocks([[] for _ in self.spec.groups])
        if request.needs_prompt_logprobs:  # every prompt position's logits are needed
            return empty
        self.prefix_stats.queries += request.num_tokens
        max_blocks = (request.num_tokens - 1) // self.block_size
        hit = self._full_group_hit(request, max_blocks)
        for index, window_blocks in enumerate(self._window_blocks):
            if window_blocks:
                hit = self._sliding_group_hit(request, index, hit, window_blocks)
        if hit == 0:
            return empty
        blocks = [self._hit_blocks(request, index, hit) for index in range(len(self.spec.groups))]
        self.prefix_stats.hits += hit * self.block_size
        return ComputedBlocks(blocks, hit * self.block_size)

    def _full_group_hit(self, request: Request, max_blocks: int) -> int:
        for index, group in enumerate(self.spec.groups):
            if not group.is_sliding:
                for position in range(max_blocks):
                    if self._cached(index, request.block_hashes[position]) is None:
                        return position
                return max_blocks
        return max_blocks

    def _sliding_group_hit(self, request: Request, group: int, limit: int, need: int) -> int:
        """Largest L <= limit whose last `need` blocks (or all, if fewer) are cached."""
        run = 0
        for position in range(limit - 1, -1, -1):
            if self._cached(group, request.block_hashes[position]) is None:
                run = 0
                continue
            run += 1
            if run == need:
                return position + need
        return run

    def _hit_blocks(self, request: Request, group: int, hit: int) -> list[KVBlock]:
        first = max(0, hit - self._window_blocks[group]) if self._window_blocks[group] else 0
        found = [self._cached(group, request.block_hashes[p]) for p in range(first, hit)]
        return [self.pool.null_block] * first + [b for b in found if b is not None]

    def _cached(self, group: int, block_hash: int) -> KVBlock | None:
        return self.pool.get_cached_block((group, block_hash))

    # --- allocation ---------------------------------------------------------------------------
    def allocate_slots(
        self, request: Request, num_new_tokens: int, computed: ComputedBlocks | None = None
    ) -> list[list[int]] | None:
        """Blocks for `num_new_tokens` more tokens; returns new block ids per group or None."""
        groups = self._requests.get(request.request_id)
        if groups is None:
            groups = [_GroupBlocks() for _ in self.spec.groups]
        hit_blocks = computed.blocks if computed else [[] for _ in self.spec.groups]
        num_computed = request.num_computed_tokens + (computed.num_tokens if computed else 0)
        if computed is None:
            self._drop_out_of_window(request, groups, num_computed)
        total_blocks = cdiv(num_computed + num_new_tokens, self.block_size)
        num_new_blocks = [
            max(0, total_blocks - len(g.blocks) - len(hit))
            for g, hit in zip(groups, hit_blocks, strict=True)
        ]
        revived = {b.block_id for hit in hit_blocks for b in hit if b.ref_cnt == 0}
        if sum(num_new_blocks) + len(revived) > self.pool.num_free_blocks:
            return None
        self._requests[request.request_id] = groups
        new_ids: list[list[int]] = []
        for hit in hit_blocks:  # before allocating: a free hit block must not be handed out
            self.pool.touch(b for b in hit if not b.is_null)
        for group, hit, count in zip(groups, hit_blocks, num_new_blocks, strict=True):
            group.blocks.extend(hit)
            group.num_cached = max(group.num_cached, len(hit))
            fresh = self.pool.allocate(count)
            group.blocks.extend(fresh)
            new_ids.append([b.block_id for b in [*hit, *fresh]])
        self.cache_blocks(request, num_computed + num_new_tokens)
        return new_ids

    def _drop_out_of_window(
        self, request: Request, groups: list[_GroupBlocks], num_computed: int
    ) -> None:
        for index, window_blocks in enumerate(self._window_blocks):
            if not window_blocks:
                continue
            window = self.spec.groups[index].sliding_window or 0
            first_needed = max(0, num_computed - window + 1) // self.block_size
            state = groups[index]
            for position in range(first_needed):
                block = state.blocks[position]
                if block.is_null:
                    continue
                state.blocks[position] = self.pool.null_block
                if self._is_retained(request, position, window_blocks):
                    state.retained[position] = block
                else:
                    self.pool.free([block])

    def _is_retained(self, request: Request, position: int, window_blocks: int) -> bool:
        """Is this block in the window before a prefix worth keeping (prompt end, intervals)?"""
        size = self.block_size
        prompt_ends = {(request.num_prompt_tokens - 1) // size, request.num_prompt_tokens // size}
        if any(end - window_blocks <= position < end for end in prompt_ends):
            return True
        interval = self.retention_interval_blocks
        return bool(interval) and (position // interval + 1) * interval - position <= window_blocks

    # --- caching and freeing ------------------------------------------------------------------
    def cache_blocks(self, request: Request, num_computed_tokens: int) -> None:
        """Register full blocks up to num_computed_tokens, so that later requests can reuse them."""
        groups = self._requests.get(request.request_id)
        if groups is None:
            return
        num_full = min(num_computed_tokens // self.block_size, len(request.block_hashes))
        hashes = request.block_hashes
        for index, state in enumerate(groups):
            stored = []
            for position in range(state.num_cached, num_full):
                block = state.blocks[position]
                if block.is_null:
                    continue
                start = position * self.block_size
                stored.append(
                    StoredBlock(
                        block=block,
                        block_hash=hashes[position],
                        parent_hash=hashes[position - 1] if position else None,
                        token_ids=request.all_token_ids[start : start + self.block_size],
                    )
                )
            state.num_cached = max(state.num_cached, num_full)
            self.pool.cache_blocks(index, stored, request.kv_extra_key)

    def free(self, request: Request) -> None:
        """Release a finished or preempted request's blocks, tail blocks evicted first."""
        groups = self._requests.pop(request.request_id, None)
        if groups is None:
            return
        held: list[tuple[int, KVBlock]] = []
        for state in groups:
            held.extend(enumerate(state.blocks))
            held.extend(state.retained.items())
        held.sort(key=lambda item: -item[0])
        self.pool.free(block for _, block in held)

    # --- introspection ------------------------------------------------------------------------
    def block_ids(self, request_id: str) -> list[list[int]]:
        groups = self._requests.get(request_id, [])
        return [[b.block_id for b in g.blocks] for g in groups]

    def num_blocks_needed(self, num_tokens: int) -> int:
        """Blocks a fresh request of num_tokens needs across groups (for admission checks)."""
        return blocks_needed(num_tokens, self.block_size, self._window_blocks)

    def admission_capacity(self, num_requests: int, committed_blocks: int) -> AdmissionCapacity:
        """Room for `num_requests` more sequences in the free blocks not `committed_blocks`
        (promised to requests already running or waiting)."""
        return AdmissionCapacity(
            num_requests=num_requests,
            kv_blocks=self.num_free_blocks - committed_blocks,
            block_size=self.block_size,
            window_blocks=tuple(self._window_blocks),
        )

    def num_reclaimable_blocks(self, request_id: str) -> int:
        """Blocks that would return to the free pool if this request were freed now (those
        it shares, e.g. a common prefix, stay held by the others)."""
        groups = self._requests.get(request_id, [])
        held = [b for g in groups for b in [*g.blocks, *g.retained.values()] if not b.is_null]
        return sum(1 for block in held if block.ref_cnt == 1)

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    @property
    def num_usable_blocks(self) -> int:
        return self.pool.num_usable_blocks

    def usage(self) -> float:
        return self.pool.usage()

    def take_events(self) -> list[KVCacheEvent]:
        return self.pool.take_events()

    def reset_prefix_cache(self) -> bool:
        return self.pool.reset_prefix_cache()
