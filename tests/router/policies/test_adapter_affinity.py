"""LoRA adapters in routing: the prefix index keys an adapter's blocks apart from the base
model's, and the policies prefer a replica that holds the adapter while load stays balanced."""

import pytest

from oss_serve.common.kv_hash import adapter_extra_key, block_hashes
from oss_serve.router.policies import LeastLoad, PrefixAware, RouteRequest
from oss_serve.router.prefix_index import PrefixIndex, PromptBlocks
from tests.router.policies.helpers import BS, candidate

pytestmark = pytest.mark.unit
PROMPT = list(range(64))  # 16 blocks


def adapter_request(adapter: str | None) -> RouteRequest:
    return RouteRequest(
        "req", PromptBlocks(PROMPT, BS, adapter_extra_key(adapter)), adapter=adapter
    )


def test_a_prefix_cached_for_the_base_model_or_another_adapter_is_no_hit_for_an_adapter():
    index = PrefixIndex()
    index.store("base", block_hashes(PROMPT, BS))
    index.store("other", block_hashes(PROMPT, BS, adapter_extra_key("other")))
    index.store("mine", block_hashes(PROMPT, BS, adapter_extra_key("mine")))
    assert index.match(adapter_request("mine").prompt) == {"mine": 16}
    assert index.match(adapter_request(None).prompt) == {"base": 16}


def test_prefix_aware_prefers_a_replica_holding_the_adapter_at_equal_load():
    policy = PrefixAware(PrefixIndex(), adapter_affinity_blocks=8.0)
    cold, warm = candidate("cold", running=1), candidate("warm", running=1, lora_held="x,mine")
    assert policy.select(adapter_request("mine"), [cold, warm]).replica_id == "warm"
    assert policy.select(adapter_request(None), [warm, cold]).replica_id in {"warm", "cold"}


def test_load_outweighs_adapter_affinity_beyond_its_cost_and_imbalance_goes_least_load():
    policy = PrefixAware(PrefixIndex(), adapter_affinity_blocks=8.0, balance_abs_threshold=50)
    cold, warm = candidate("cold", running=0), candidate("warm", running=12, lora_held="mine")
    assert policy.select(adapter_request("mine"), [cold, warm]).replica_id == "cold"  # 8 < 12
    guarded = PrefixAware(PrefixIndex(), balance_abs_threshold=4, balance_rel_threshold=1.5)
    busy = candidate("warm", running=9, lora_held="mine")
    assert guarded.select(adapter_request("mine"), [candidate("cold"), busy]).replica_id == "cold"


def test_least_load_breaks_ties_towards_the_replica_holding_the_adapter():
    policy = LeastLoad()
    for _ in range(3):  # ties would rotate without the adapter
        warm = candidate("warm", running=2, lora_held="mine")
        chosen = policy.select(adapter_request("mine"), [candidate("cold", running=2), warm])
        assert chosen.replica_id == "warm"
    busier = candidate("warm", running=3, lora_held="mine")
    assert (
        policy.select(adapter_request("mine"), [candidate("cold", running=2), busier]).replica_id
        == "cold"
    )
