"""Acceptance for Ray TP/EP replicas on CPU (gloo): the same answers as the single-process
engine, one shard per rank, a clean failure when a rank dies.

One local Ray runtime for the module (starting it costs seconds). Replicas: TP=2 (through
`LLM(tensor_parallel_size=2)`), EP=2, TP=2 x EP=2 (4 ranks) and TP=2 with the experts split
over the same two ranks. The last tests drain one replica and kill ranks of two others.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time

import pytest
import pytest_asyncio
import ray
import torch
from safetensors import safe_open

from oss_serve import LLM, SamplingParams
from oss_serve.cluster.ray.engine import EngineDrainingError, RayEngine
from oss_serve.cluster.ray.executor import RayEngineFailedError, RayEngineOptions
from oss_serve.workers.engine.async_engine import EngineDeadError
from oss_serve.workers.engine.engine_config import EngineConfig
from oss_serve.workers.model.model import GptOss
from tests.cluster.ray.ray_engines import (
    ENGINE_ARGS,
    SMALL_VOCAB_CONFIG,
    RayEnginePool,
    write_checkpoint,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LOGPROB_TOLERANCE = 1e-4
CONFIG = SMALL_VOCAB_CONFIG
REPLICAS = {  # name -> (tensor_parallel_size, expert_parallel_size, experts_across_all_ranks)
    "ep2": (1, 2, False),
    "tp2xep2": (2, 2, False),
    "tp2-experts-over-tp": (2, 1, True),
}


def _workload() -> list[tuple[list[int], SamplingParams]]:
    """12 concurrent requests: short and long (> window) prompts, shared prefixes, logprobs."""
    rng = random.Random(11)
    shared = [rng.randrange(1, 512) for _ in range(30)]
    requests = []
    for i in range(12):
        tail = [rng.randrange(1, 512) for _ in range(rng.choice([2, 7, 19, 45]))]
        prompt = shared[: rng.choice([12, 30])] + tail if i % 2 else tail
        params = SamplingParams(
            temperature=0,
            max_tokens=rng.choice([4, 7, 10]),
            ignore_eos=True,
            prompt_logprobs=2 if i % 3 == 0 else None,
            logprobs=1,
        )
        requests.append((prompt, params))
    return requests


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(CONFIG, tmp_path_factory.mktemp("tiny-mxfp4"), seed=5)


@pytest.fixture(scope="module")
def reference(checkpoint):
    """The single-process engine's answers to the workload (one batch)."""
    prompts = [{"prompt_token_ids": prompt} for prompt, _ in _workload()]
    params = [params for _, params in _workload()]
    return [_summary(o) for o in LLM(str(checkpoint), **ENGINE_ARGS).generate(prompts, params)]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def replicas(ray_runtime, checkpoint):
    """Started lazily, shared by the tests of the module, shut down at its end."""
    pool = RayEnginePool(checkpoint, ENGINE_ARGS, REPLICAS)
    yield pool.get
    await pool.shutdown()


def _summary(output) -> tuple[list[int], list[dict[int, float]] | None]:
    """(generated tokens, prompt logprobs as {token: logprob} per position after the first)."""
    prompt = output.prompt_logprobs
    logprobs = (
        None if prompt is None else [{t: lp.logprob for t, lp in d.items()} for d in prompt[1:]]
    )
    return output.outputs[0].token_ids, logprobs


async def _generate(replica: RayEngine, request_id: str, prompt, params):
    tokens, prompt_logprobs = [], None
    async for delta in replica.generate(request_id, prompt, params):
        tokens += delta.outputs[0].token_ids
        prompt_logprobs = prompt_logprobs or delta.prompt_logprobs
    return _summary_of(tokens, prompt_logprobs)


def _summary_of(tokens, prompt_logprobs):
    if prompt_logprobs is None:
        return tokens, None
    return tokens, [{t: lp.logprob for t, lp in d.items()} for d in prompt_logprobs[1:]]


def _assert_same_answers(got, expected) -> None:
    assert len(got) == len(expected)
    worst = 0.0
    for index, ((tokens, logprobs), (ref_tokens, ref_logprobs)) in enumerate(
        zip(got, expected, strict=True)
    ):
        assert tokens == ref_tokens, f"request {index}: greedy tokens differ"
        assert (logprobs is None) == (ref_logprobs is None)
        for position, (entry, ref_entry) in enumerate(
            zip(logprobs or [], ref_logprobs or [], strict=True)
        ):
            assert entry.keys() == ref_entry.keys(), f"request {index} position {position}"
            worst = max(worst, *(abs(entry[t] - ref_entry[t]) for t in entry))
    print(f"max prompt-logprob difference {worst:.2e}")
    assert worst <= LOGPROB_TOLERANCE, worst


# --- same answers as the single-process engine ------------------------------------------------
def test_llm_with_tensor_parallel_size_2_matches_the_single_process_engine(
    ray_runtime, checkpoint, reference
):
    with LLM(str(checkpoint), tensor_parallel_size=2, **ENGINE_ARGS) as llm:
        workload = _workload()
        outputs = llm.generate(
            [{"prompt_token_ids": p} for p, _ in workload], [params for _, params in workload]
        )
        _assert_same_answers([_summary(o) for o in outputs], reference)
        reports = llm.llm_engine.executor.shard_reports  # type: ignore[attr-defined]
        assert [(r.tp_rank, r.tp_size, r.ep_size) for r in reports] == [(0, 2, 1), (1, 2, 1)]


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("name", list(REPLICAS))
async def test_concurrent_requests_match_the_single_process_engine(replicas, reference, name):
    replica = await replicas(name)
    got = await asyncio.gather(
        *(_generate(replica, f"{name}-{i}", p, s) for i, (p, s) in enumerate(_workload()))
    )
    _assert_same_answers(got, reference)
    health = await replica.health()
    assert [h.rank for h in health] == list(range(len(health)))
    assert all(h.divergent_tokens == 0 for h in health)  # every rank sampled what rank 0 did


# --- one shard per rank ------------------------------------------------------------------------
def _expected_rank_bytes(tp: int, expert_shards: int) -> int:
    """Bytes one rank should hold, from the unsharded model's tensors and the sharding rules."""
    full = GptOss(CONFIG, experts_format="dense", dtype=torch.float32, device="meta")
    total = 0
    for name, tensor in full.state_dict().items():
        size = tensor.numel() * tensor.element_size()
        if ".mlp.experts." in name:
            size //= expert_shards
        elif any(p in name for p in ("q_proj", "k_proj", "v_proj", "sinks", "o_proj.weight")):
            size //= tp
        elif name in ("embed_tokens.weight", "lm_head.weight"):
            size = -(-CONFIG.vocab_size // tp) * CONFIG.hidden_size * tensor.element_size()
        total += size
    return total


def _checkpoint_tensors(folder) -> dict[str, int]:
    """Checkpoint key -> bytes, read from the safetensors headers."""
    sizes = {}
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118
            tensor_slice = handle.get_slice(key)
            numel = 1
            for dim in tensor_slice.get_shape():
                numel *= dim
            sizes[key] = numel * {"U8": 1, "F32": 4, "BF16": 2}[tensor_slice.get_dtype()]
    return sizes


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("name", list(REPLICAS))
async def test_each_rank_holds_and_reads_only_its_shard(replicas, checkpoint, name):
    replica = await replicas(name)
    tp, ep, across = REPLICAS[name]
    world = tp * ep
    expert_shards = world if across else ep
    experts_per_rank = CONFIG.num_local_experts // expert_shards
    checkpoint_bytes = _checkpoint_tensors(checkpoint)
    expert_keys = {k for k in checkpoint_bytes if ".mlp.experts." in k}
    for report in replica.executor.shard_reports:
        assert report.parameter_bytes == _expected_rank_bytes(tp, expert_shards)
        read_keys = [read.key for read in report.reads]
        assert sorted(read_keys) == sorted(checkpoint_bytes)  # every tensor once, nothing twice
        first = report.ep_rank * experts_per_rank
        for read in report.reads:
            if read.key in expert_keys:  # only this rank's experts' rows, never the others'
                assert (read.dim, read.start, read.stop) == (0, first, first + experts_per_rank)
        expert_bytes = sum(r.num_bytes for r in report.reads if r.key in expert_keys)
        assert expert_bytes * expert_shards == sum(checkpoint_bytes[k] for k in expert_keys)
        assert report.bytes_read < sum(checkpoint_bytes.values())
    health = await replica.health()
    kv_heads_per_rank = CONFIG.num_key_value_heads // tp
    assert all(h.kv_cache_shape[3] == kv_heads_per_rank for h in health)


# --- lifecycle: drain, failures --------------------------------------------------------------
@pytest.mark.asyncio(loop_scope="module")
async def test_drain_finishes_running_requests_and_refuses_new_ones(replicas):
    replica = await replicas("ep2")
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    running = asyncio.create_task(_generate(replica, "drain-long", list(range(1, 20)), params))
    await asyncio.sleep(0.2)
    drained = asyncio.create_task(replica.drain(timeout_s=60))
    await asyncio.sleep(0)
    assert not replica.can_admit(4)
    with pytest.raises(EngineDrainingError):
        await _generate(replica, "drain-new", [1, 2, 3], params)
    tokens, _ = await running
    assert len(tokens) == 40
    assert await drained is True


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.timeout(60)
async def test_a_rank_killed_while_idle_fails_the_replica_within_seconds(replicas):
    replica = await replicas("ep2")  # drained above; idle
    health = await replica.health()
    os.kill(health[1].pid, signal.SIGKILL)
    started = time.monotonic()
    failure = await asyncio.wait_for(replica.wait_failed(), timeout=15)
    assert time.monotonic() - started < 15
    assert "rank 1" in str(failure)
    assert not replica.is_running
    with pytest.raises(EngineDeadError, match="rank 1"):
        await _generate(replica, "after-failure", [1, 2, 3], SamplingParams(max_tokens=2))


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.timeout(60)
async def test_a_rank_killed_mid_run_ends_every_request_with_a_clear_error(replicas):
    replica = await replicas("tp2-experts-over-tp")
    params = SamplingParams(temperature=0, max_tokens=120, ignore_eos=True)
    first_tokens = asyncio.Event()

    async def run(request_id: str) -> BaseException | None:
        try:
            async for _ in replica.generate(request_id, list(range(5, 25)), params):
                first_tokens.set()
        except EngineDeadError as exc:
            return exc
        return None

    tasks = [asyncio.create_task(run(f"doomed-{i}")) for i in range(4)]
    await asyncio.wait_for(first_tokens.wait(), timeout=20)
    victim = (await replica.health())[1]
    os.kill(victim.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    errors = await asyncio.wait_for(asyncio.gather(*tasks), timeout=15)
    assert time.monotonic() - killed_at < 15
    assert all(isinstance(e, EngineDeadError) and "rank 1" in str(e) for e in errors), errors
    assert not replica.is_running
    with pytest.raises(RayEngineFailedError):
        await replica.health()
    executor = replica.executor
    assert executor is not None and executor._group is None  # placement group released
    with pytest.raises(ray.exceptions.RayActorError):  # the surviving rank was stopped too
        ray.get(executor.workers[0].health.remote(), timeout=10)


def test_a_replica_the_cluster_cannot_hold_fails_fast_naming_the_resources(ray_runtime):
    from oss_serve.cluster.ray.executor import RayExecutor
    from oss_serve.cluster.ray.placement import PlacementError

    config = EngineConfig(model="gpt-oss-tiny", tensor_parallel_size=8, device="cpu")
    options = RayEngineOptions(cpus_per_rank=1.0, placement_timeout_s=1)
    groups_before = _live_placement_groups()
    with pytest.raises(PlacementError, match=r"could not reserve 8 bundles of \{'CPU': 1.0\}"):
        RayExecutor(config, options)
    assert _live_placement_groups() == groups_before  # nothing left reserved


def _live_placement_groups() -> set[str]:
    table = ray.util.placement_group_table()
    return {group_id for group_id, g in table.items() if g["state"] != "REMOVED"}


def test_a_rank_that_cannot_load_its_shard_fails_start_with_the_rank_and_cause(
    ray_runtime, tmp_path
):
    config = EngineConfig(model=str(tmp_path), tensor_parallel_size=2, **ENGINE_ARGS)
    replica = RayEngine(config, options=RayEngineOptions(cpus_per_rank=0.5))
    with pytest.raises(
        RayEngineFailedError, match=r"rank \d \(tp \d, ep 0\) raised during setup.*config"
    ):
        asyncio.run(replica.start())
