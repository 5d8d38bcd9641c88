import pytest

from oss_serve.common.kv_hash import block_hashes
from oss_serve.router.errors import Unavailable
from oss_serve.router.policies import PrefixAware, make_policy
from oss_serve.router.prefix_index import PrefixIndex
from tests.router.policies.helpers import BS, candidate, request

pytestmark = pytest.mark.unit
PROMPT = list(range(64))  # 16 blocks


def policy_with(index: PrefixIndex, **kwargs) -> PrefixAware:
    return PrefixAware(index, balance_abs_threshold=4, balance_rel_threshold=1.5, **kwargs)


def test_goes_where_the_prefix_is_cached():
    index = PrefixIndex()
    index.store("b", block_hashes(PROMPT, BS))
    decision = policy_with(index).select(request([*PROMPT, 7]), [candidate("a"), candidate("b")])
    assert (decision.replica_id, decision.matched_blocks, decision.reason) == ("b", 16, "prefix")


def test_prefill_queued_ahead_outweighs_a_short_cached_prefix():
    index = PrefixIndex()
    index.store("b", block_hashes(PROMPT[:8], BS))  # 2 of 16 blocks cached on b
    a, b = candidate("a"), candidate("b")
    b.unreported_blocks = 10  # 10 blocks routed to b, not prefilled yet
    assert policy_with(index).select(request(PROMPT), [a, b]).replica_id == "a"  # 16 < 14 + 10
    index.store("b", block_hashes(PROMPT, BS))  # all 16 cached: worth the wait
    assert policy_with(index).select(request(PROMPT), [a, b]).replica_id == "b"  # 16 > 0 + 10


def test_overlap_weight_scales_cache_against_load():
    index = PrefixIndex()
    index.store("b", block_hashes(PROMPT[:16], BS))  # 4 blocks cached on b
    a, b = candidate("a"), candidate("b")
    b.unreported_blocks = 6
    assert policy_with(index, overlap_weight=1.0).select(request(PROMPT), [a, b]).replica_id == "a"
    assert policy_with(index, overlap_weight=2.0).select(request(PROMPT), [a, b]).replica_id == "b"


def test_queued_requests_count_as_the_mean_uncached_prompt():
    index = PrefixIndex()
    index.store("b", block_hashes(PROMPT, BS))
    policy = policy_with(index)
    policy.mean_uncached_blocks = 17.0
    a, b = candidate("a"), candidate("b", queued=2)  # 1 + 2 x 17 on b > 17 on a
    assert policy.select(request([*PROMPT, 1]), [a, b]).replica_id == "a"


def test_running_decodes_weigh_one_block_each_but_dynamo_charges_their_whole_context():
    index = PrefixIndex()
    index.store("b", block_hashes(PROMPT, BS))  # a conversation's history is cached on b
    a = candidate("a", kv_blocks_total=1000, kv_blocks_free=1000)
    b = candidate("b", running=1, kv_blocks_total=1000, kv_blocks_free=980)  # one long decode
    ours = policy_with(index)
    dynamo = policy_with(index, load_measure="kv_blocks")
    assert ours.select(request([*PROMPT, 1]), [a, b]).replica_id == "b"  # 1 + 1 < 17
    assert dynamo.select(request([*PROMPT, 1]), [a, b]).replica_id == "a"  # 1 + 20 > 17


def test_unknown_load_measure_is_refused():
    with pytest.raises(ValueError, match="prefill, kv_blocks"):
        PrefixAware(PrefixIndex(), load_measure="vibes")


def test_imbalance_falls_back_to_least_load_even_with_a_full_hit():
    index = PrefixIndex()
    index.store("b", block_hashes(PROMPT, BS))
    decision = policy_with(index).select(
        request(PROMPT), [candidate("a", running=1), candidate("b", running=9)]
    )
    assert (decision.replica_id, decision.reason) == ("a", "imbalanced")


def test_no_hit_prefers_the_replica_with_fewer_indexed_blocks():
    index = PrefixIndex()
    index.store("a", block_hashes(list(range(1000, 1040)), BS))
    decision = policy_with(index).select(request(PROMPT), [candidate("a"), candidate("b")])
    assert (decision.replica_id, decision.reason) == ("b", "load")


def test_routing_records_the_prompt_so_a_burst_with_a_new_prefix_lands_together():
    index = PrefixIndex()
    policy = make_policy("prefix_aware", index=index)
    cands = [candidate("a"), candidate("b")]
    first = policy.select(request(PROMPT), cands)
    policy.on_routed(request(PROMPT), first.replica_id)
    for _ in range(3):
        again = policy.select(request([*PROMPT, 9, 9]), cands)
        assert again.replica_id == first.replica_id and again.matched_blocks == 16


def test_zero_weight_is_pure_load_balancing_and_keeps_no_index():
    index = PrefixIndex()
    index.store("b", block_hashes(PROMPT, BS))
    policy = policy_with(index, overlap_weight=0.0)
    decision = policy.select(request(PROMPT), [candidate("a"), candidate("b", running=1)])
    assert decision.replica_id == "a"
    policy.on_routed(request(list(range(500, 540))), "a")
    assert index.block_count("a") == 0


def test_no_healthy_replica_is_unavailable():
    with pytest.raises(Unavailable):
        policy_with(PrefixIndex()).select(request(PROMPT), [])


def test_unknown_policy_name_lists_the_choices():
    with pytest.raises(ValueError, match="round_robin, least_load, prefix_aware"):
        make_policy("random")
