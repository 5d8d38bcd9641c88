"""KV-cache manager: hybrid full/sliding layout, prefix hits, retention, events (no model)."""

from __future__ import annotations

import pytest
import torch

from oss_serve.common.kv_hash import block_hashes
from oss_serve.workers.engine.block_pool import BlockPool, StoredBlock
from oss_serve.workers.engine.kv_cache_manager import KVCacheManager
from oss_serve.workers.engine.kv_cache_spec import KVCacheSpec, KVGroupSpec
from oss_serve.workers.engine.request import Request
from oss_serve.workers.engine.sampling_params import SamplingParams

pytestmark = pytest.mark.unit
BLOCK = 4
WINDOW = 8  # -> the window before a prefix spans cdiv(7, 4) = 2 blocks


def _spec(sliding: bool = True) -> KVCacheSpec:
    groups = [KVGroupSpec("full_attention", (1, 3))]
    if sliding:
        groups.append(KVGroupSpec("sliding_attention", (0, 2), sliding_window=WINDOW))
    return KVCacheSpec(BLOCK, tuple(groups), num_kv_heads=1, head_dim=2, dtype=torch.float32)


def _request(request_id: str, tokens: list[int], **params) -> Request:
    return Request(
        request_id, tokens, SamplingParams(**params), seed=0, eos_token_ids=frozenset(),
        block_size=BLOCK, max_tokens=100,
    )  # fmt: skip


def _run_to(manager: KVCacheManager, request: Request, num_tokens: int, chunk: int = 1000) -> None:
    """Schedule request the way the scheduler does until num_computed_tokens == num_tokens."""
    computed = manager.get_computed_blocks(request)
    first = min(chunk, num_tokens - computed.num_tokens)
    assert manager.allocate_slots(request, first, computed) is not None
    request.num_computed_tokens = computed.num_tokens + first
    while request.num_computed_tokens < num_tokens:
        step = min(chunk, num_tokens - request.num_computed_tokens)
        assert manager.allocate_slots(request, step) is not None
        request.num_computed_tokens += step


def _decode(manager: KVCacheManager, request: Request, steps: int) -> None:
    for i in range(steps):
        request.append_output_tokens([1000 + i])
        assert manager.allocate_slots(request, 1) is not None
        request.num_computed_tokens += 1


def test_block_pool_evicts_least_recently_freed_and_reports_removed_hashes():
    pool = BlockPool(4, block_size=BLOCK, event_group=0)
    first, second, _ = pool.allocate(3)
    pool.cache_blocks(0, [StoredBlock(first, 11, None, [1, 2, 3, 4])], None)
    pool.free([first])
    pool.free([second])
    assert pool.get_cached_block((0, 11)) is first
    (reused,) = pool.allocate(1)  # the least recently freed block goes first
    assert reused is first and pool.get_cached_block((0, 11)) is None
    kinds = [(e.kind, e.block_hashes) for e in pool.take_events()]
    assert kinds == [("stored", [11]), ("removed", [11])]


def test_sliding_layers_hold_only_the_window_so_long_requests_cost_the_full_layers():
    manager = KVCacheManager(_spec(), num_blocks=200, enable_caching=False)
    request = _request("long", list(range(300)))
    _run_to(manager, request, 300, chunk=16)
    full_ids, sliding_ids = manager.block_ids("long")
    assert len(full_ids) == 75
    live_sliding = [b for b in sliding_ids if b != 0]
    # the window (8 tokens) + the chunk being computed, never the whole sequence
    assert len(live_sliding) <= (WINDOW + 16) // BLOCK + 2
    # retained: the window before the prompt's end is the current one here; nothing else leaks
    assert manager.num_usable_blocks - manager.num_free_blocks == len(full_ids) + len(live_sliding)


def test_prefix_hit_needs_the_sliding_window_before_it_not_just_full_blocks():
    manager = KVCacheManager(_spec(), num_blocks=100)
    prompt = list(range(40))
    first = _request("a", prompt)
    _run_to(manager, first, 40)
    manager.free(first)
    second = _request("b", [*prompt, 99, 98])
    hit = manager.get_computed_blocks(second)
    assert hit.num_tokens == 40
    # evict the sliding block just before the boundary: the hit falls back to a boundary
    # whose whole window is still cached (here: none), even though the full blocks remain
    pool = manager.pool
    sliding_key = (1, second.block_hashes[9])
    victim = pool.get_cached_block(sliding_key)
    pool._evict(victim)
    assert manager.get_computed_blocks(second).num_tokens < 40


def test_prompt_end_window_is_retained_through_decode_so_the_next_turn_hits():
    manager = KVCacheManager(_spec(), num_blocks=200)
    turn1 = _request("t1", list(range(37)))
    _run_to(manager, turn1, 37)
    _decode(manager, turn1, 40)  # the window slides far past the prompt's end
    held_at_end = manager.num_usable_blocks - manager.num_free_blocks
    manager.free(turn1)
    # evict everything freed before turn1 ended (incl. the sliding blocks that slid out)
    manager.pool.allocate(manager.num_free_blocks - held_at_end)
    turn2 = _request("t2", [*range(37), 7, 7, 7, 7, 7])
    assert manager.get_computed_blocks(turn2).num_tokens == 36  # 9 full blocks of the prompt


def test_allocation_touches_free_hit_blocks_before_taking_new_ones():
    """Regression: allocating the full group's new blocks must not evict the sliding hit."""
    manager = KVCacheManager(_spec(), num_blocks=11)  # exactly what the first request used
    prompt = list(range(20))
    first = _request("a", prompt)
    _run_to(manager, first, 20)
    manager.free(first)
    second = _request("b", [*prompt, *range(50, 54)])
    computed = manager.get_computed_blocks(second)
    assert computed.num_tokens == 20
    hit_ids = [[b.block_id for b in group] for group in computed.blocks]
    new_ids = manager.allocate_slots(second, 4, computed)
    assert new_ids is not None
    fresh = {b for group, hit in zip(new_ids, hit_ids, strict=True) for b in group[len(hit) :]}
    assert fresh and not fresh & {b for group in hit_ids for b in group if b}


def test_allocation_fails_cleanly_when_the_pool_is_short():
    manager = KVCacheManager(_spec(sliding=False), num_blocks=5)
    request = _request("a", list(range(40)))
    assert manager.allocate_slots(request, 40, manager.get_computed_blocks(request)) is None
    assert manager.num_free_blocks == 4


def test_stored_events_carry_the_routers_hashes_of_the_prompt():
    events = []
    manager = KVCacheManager(_spec(), num_blocks=50)
    prompt = list(range(13))
    _run_to(manager, _request("a", prompt), 13)
    events = manager.take_events()
    stored = [h for e in events if e.kind == "stored" for h in e.block_hashes]
    assert stored == block_hashes(prompt, BLOCK)  # 3 full blocks, only the full-attention group
    assert events[0].token_ids == prompt[:12]


def test_without_prefix_caching_nothing_is_shared_and_no_events_are_sent():
    manager = KVCacheManager(_spec(), num_blocks=50, enable_caching=False)
    first = _request("a", list(range(20)))
    _run_to(manager, first, 20)
    manager.free(first)
    assert manager.take_events() == []
    other = Request(
        "b", list(range(24)), SamplingParams(), seed=0, eos_token_ids=frozenset(),
        block_size=BLOCK, max_tokens=10, kv_extra_key="private-other",
    )  # fmt: skip
    assert manager.get_computed_blocks(other).num_tokens == 0
