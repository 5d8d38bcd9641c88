"""The replica's side of the queue with a real engine in this process (so its stats can be
read): back-pressured pulls, cancellation and deadlines freeing the engine within a step,
dead letters, and overload refused with retry information; a real router in-process too."""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc
import httpx
import pytest
import pytest_asyncio
import torch
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from oss_serve.cluster.replica.config import ReplicaConfig
from oss_serve.cluster.replica.queue import ReplicaQueue
from oss_serve.cluster.replica.service import ReplicaService
from oss_serve.common.settings import Settings
from oss_serve.protos import inference_pb2, inference_pb2_grpc, replica_link_pb2
from oss_serve.router.enqueue import RequestQueue
from oss_serve.router.http.server import start_http_api
from oss_serve.router.server import RouterServer
from oss_serve.streams.keys import CONSUMER_GROUP, RedisKeys
from oss_serve.streams.kv_events import KvEventPublisher
from oss_serve.streams.redis_client import connect
from oss_serve.workers.engine.async_engine import AsyncEngine
from oss_serve.workers.engine.engine_config import EngineConfig
from oss_serve.workers.engine.sampling_params import SamplingParams
from tests.router.servers import redis_server
from tests.workers.engine.engine_stall import stall_engine_thread

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]
__all__ = ["redis_server"]
MAX_NUM_SEQS = 2


class Stack:
    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self.namespace = f"svc-{uuid.uuid4().hex[:6]}"
        self.keys = RedisKeys(self.namespace)
        self.redis = connect(redis_url)
        self.routers: list[RouterServer] = []

    async def start(self) -> None:
        torch.set_num_threads(1)
        publisher = KvEventPublisher(self.redis, self.keys, "local", block_size=16)
        self.engine = AsyncEngine(
            EngineConfig(
                model="gpt-oss-tiny", max_model_len=1024, num_kv_blocks=400,
                max_num_seqs=MAX_NUM_SEQS, kv_event_sink=publisher.sink,
            )
        )  # fmt: skip
        await self.engine.start()
        self.queue = ReplicaQueue(self.redis, self.keys, "local", heartbeat_ttl_s=1.0)
        config = ReplicaConfig(
            replica_id="local", model="gpt-oss-tiny", max_model_len=1024, heartbeat_interval_s=0.1
        )
        self.service = ReplicaService(
            self.engine,
            self.queue,
            config,
            make_sampling_params=SamplingParams.from_dict,
            kv_events=publisher,
        )
        await self.service.start()

    async def router(self, **settings: object) -> RouterServer:
        server = RouterServer(
            Settings(
                redis_url=self.redis_url, redis_namespace=self.namespace, grpc_port=0, **settings
            )
        )
        await server.start()
        await server.wait_for_replicas(1)
        self.routers.append(server)
        return server

    async def idle(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            stats = self.engine.stats()
            if stats.running == 0 and stats.waiting == 0 and not self.service.inflight.deliveries:
                return
            await asyncio.sleep(0.01)
        raise TimeoutError(f"engine still busy: {self.engine.stats()}")

    async def pending(self) -> int:
        total = 0
        for stream in [
            *self.keys.replica_streams("local"),
            self.keys.overflow_stream("interactive"),
        ]:
            if await self.redis.exists(stream):
                total += (await self.redis.xpending(stream, CONSUMER_GROUP))["pending"]
        return total

    async def stop(self) -> None:
        for router in self.routers:
            await router.stop()
        await self.service.stop()
        await self.engine.shutdown()
        await self.redis.aclose()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(redis_server):
    stack = Stack(redis_server.url)
    await stack.start()
    yield stack
    await stack.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def router(stack):
    return await stack.router()


def generate_request(prompt: list[int], max_tokens: int) -> inference_pb2.GenerateRequest:
    return inference_pb2.GenerateRequest(
        prompt_token_ids=prompt,
        sampling=inference_pb2.SamplingParams(temperature=0, max_tokens=max_tokens),
    )


async def test_client_cancel_aborts_in_the_engine_and_frees_its_blocks_within_a_step(stack, router):
    await stack.idle()
    free_before = stack.engine.stats().kv_blocks_free
    async with grpc.aio.insecure_channel(router.address) as channel:
        call = inference_pb2_grpc.InferenceStub(channel).Generate(
            generate_request(list(range(200, 300)), 900)
        )
        received = 0
        async for chunk in call:
            received += len(chunk.token_ids)
            if received >= 3:
                break
        assert stack.engine.stats().running == 1
        steps_at_cancel = stack.engine.stats().num_steps
        call.cancel()
        await stack.idle(timeout_s=5)
    steps_taken = stack.engine.stats().num_steps - steps_at_cancel
    assert steps_taken <= 2, f"the engine ran {steps_taken} steps after the cancel"
    assert stack.engine.stats().kv_blocks_free == free_before
    assert await stack.pending() == 0  # acknowledged and deleted


async def test_an_http_client_gone_mid_stream_stops_its_request_within_a_step(stack, router):
    await stack.idle()
    free_before = stack.engine.stats().kv_blocks_free
    http = await start_http_api(router, router.settings.model_copy(update={"http_port": 0}))
    body = {"prompt": list(range(500, 560)), "max_tokens": 900, "stream": True}
    try:
        async with (
            httpx.AsyncClient(timeout=30) as client,
            client.stream("POST", f"{http.url}/v1/completions", json=body) as response,
        ):
            assert response.status_code == 200
            received = 0
            async for line in response.aiter_lines():
                received += line.startswith("data:")
                if received >= 3:
                    break
            assert stack.engine.stats().running == 1
            steps_at_close = stack.engine.stats().num_steps
        await stack.idle(timeout_s=5)  # the connection is closed: gone mid-stream
    finally:
        await http.stop()
    steps_taken = stack.engine.stats().num_steps - steps_at_close
    assert steps_taken <= 2, f"the engine ran {steps_taken} steps after the client left"
    assert stack.engine.stats().kv_blocks_free == free_before
    assert await stack.pending() == 0


async def test_deadline_aborts_the_request_with_deadline_exceeded(stack, router):
    await stack.idle()
    free_before = stack.engine.stats().kv_blocks_free
    async with grpc.aio.insecure_channel(router.address) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in stub.Generate(generate_request(list(range(400, 450)), 900), timeout=0.6):
                pass
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await stack.idle(timeout_s=5)
    assert stack.engine.stats().kv_blocks_free == free_before
    assert await stack.pending() == 0


async def test_replica_pulls_only_what_the_engine_can_admit(stack, router):
    await stack.idle()
    async with grpc.aio.insecure_channel(router.address) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)

        async def one(i: int) -> int:
            tokens = 0
            async for chunk in stub.Generate(generate_request([900 + i] * 40, 24)):
                tokens += len(chunk.token_ids)
            return tokens

        tasks = [asyncio.create_task(one(i)) for i in range(8)]
        most_pending = 0
        while not all(t.done() for t in tasks):
            most_pending = max(most_pending, await stack.pending())
            await asyncio.sleep(0.01)
        assert [t.result() for t in tasks] == [24] * 8
    assert 1 <= most_pending <= MAX_NUM_SEQS + 1  # running + at most one being started
    assert await stack.pending() == 0


async def test_a_burst_is_pulled_at_once_up_to_the_free_slots_while_the_engine_is_busy(
    stack, router
):
    await stack.idle()
    release = await stall_engine_thread(stack.engine)  # as if in a long step
    try:
        async with grpc.aio.insecure_channel(router.address) as channel:
            stub = inference_pb2_grpc.InferenceStub(channel)

            async def one(i: int) -> int:
                chunks = stub.Generate(generate_request([1500 + i] * 40, 8))
                return sum([len(chunk.token_ids) async for chunk in chunks])

            tasks = [asyncio.create_task(one(i)) for i in range(MAX_NUM_SEQS + 2)]
            deadline = time.monotonic() + 10
            while await stack.pending() < MAX_NUM_SEQS and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)  # room to over-pull, if it would
            assert await stack.pending() == MAX_NUM_SEQS  # every free slot, no more
            release.set()
            assert await asyncio.gather(*tasks) == [8] * (MAX_NUM_SEQS + 2)
    finally:
        release.set()
    await stack.idle()
    assert await stack.pending() == 0


async def test_a_request_past_its_deadline_is_dead_lettered_unstarted(stack, router):
    record = replica_link_pb2.QueueRecord(
        request_id="expired",
        reply_to=router.address,
        prompt_token_ids=[1, 2, 3],
        sampling=inference_pb2.SamplingParams(max_tokens=4),
        lane="interactive",
        deadline_unix_s=time.time() - 1,
    )
    await RequestQueue(stack.redis, stack.keys).enqueue("local", record)
    deadline = time.monotonic() + 5
    letters: list = []
    while time.monotonic() < deadline and not letters:
        letters = await stack.redis.xrange(stack.keys.dead_letters)
        await asyncio.sleep(0.02)
    (_, fields), *_ = letters
    assert fields[b"request_id"] == b"expired"
    assert b"deadline" in fields[b"reason"]
    assert await stack.pending() == 0


async def test_overload_refuses_with_retry_info_and_completes_the_accepted(stack):
    await stack.idle()
    tight = await stack.router(max_queued_per_replica=3)
    release = await stall_engine_thread(stack.engine)  # nothing finishes while the burst lands
    async with grpc.aio.insecure_channel(tight.address) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)

        async def one(i: int) -> tuple[str, object]:
            try:
                tokens = [
                    t
                    async for c in stub.Generate(generate_request([1200 + i] * 30, 16))
                    for t in c.token_ids
                ]
            except grpc.aio.AioRpcError as err:
                return "refused", err
            return "done", tokens

        try:
            tasks = [asyncio.create_task(one(i)) for i in range(24)]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not any(
                task.done() and task.result()[0] == "refused" for task in tasks
            ):
                await asyncio.sleep(0.02)
        finally:
            release.set()
        results = await asyncio.gather(*tasks)
    refused = [r for kind, r in results if kind == "refused"]
    done = [r for kind, r in results if kind == "done"]
    assert refused and done
    assert all(len(tokens) == 16 for tokens in done)
    for err in refused:
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "retry after" in err.details()
        assert int(dict(err.trailing_metadata())["retry-after"]) >= 1
        status = rpc_status.from_call(err)
        retry = error_details_pb2.RetryInfo()
        assert status.details[0].Unpack(retry) and retry.retry_delay.seconds >= 1
    await stack.idle()
    assert await stack.pending() == 0
    for stream in [*stack.keys.replica_streams("local"), stack.keys.overflow_stream("interactive")]:
        assert await stack.redis.xlen(stream) == 0
