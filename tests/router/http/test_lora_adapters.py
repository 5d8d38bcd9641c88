"""LoRA adapters through the whole stack: a real replica subprocess with --enable-lora and
--lora-modules, a router, the official openai client and gRPC. Adapters are listed with
their parent, chosen per request by `model` on HTTP and gRPC (the replica's tokens equal
the engine's own for that adapter), loaded and unloaded at run time behind the admin key;
an unknown adapter is a 404, a rank above the maximum or a corrupt adapter a 400 with the
reason, and the replica keeps serving."""

from __future__ import annotations

import json
import time
import uuid

import grpc
import httpx
import openai
import pytest
import redis

from oss_serve.protos import inference_pb2, inference_pb2_grpc
from oss_serve.streams.registry import ReplicaLoad
from oss_serve.workers.lora.peft_format import ADAPTER_CONFIG, write_adapter
from oss_serve.workers.lora.synthetic import random_adapter
from oss_serve.workers.model.config import PRESETS
from tests.router.http.stack import API_KEY, TINY_MODEL, Stack
from tests.router.stack import key_metadata

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ADMIN_KEY = "sk-admin-test"
PROMPT = [200006, 1428, 200008, 40, 1309, 261, 1746, 13, 200007, 200006, 173781, 200005]
TINY = PRESETS[TINY_MODEL]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    for name, rank, seed in (("tiny-a", 4, 1), ("tiny-b", 2, 2), ("too-big", 16, 3)):
        write_adapter(root / name, random_adapter(TINY, rank=rank, alpha=2.0 * rank, seed=seed))
    (root / "corrupt").mkdir()
    (root / "corrupt" / ADAPTER_CONFIG).write_text(json.dumps({"r": 2, "lora_alpha": 4}))
    (root / "corrupt" / "adapter_model.safetensors").write_bytes(b"\x07" * 100)
    return root


@pytest.fixture(scope="module")
def lora_stack(tmp_path_factory, adapters):
    args = ("--enable-lora", "--lora-modules", f"tiny-a={adapters / 'tiny-a'}",
            "--max-loras", "2", "--max-lora-rank", "8")  # fmt: skip
    stack = Stack(tmp_path_factory.mktemp("lora-stack"), f"lora-{uuid.uuid4().hex[:6]}", args)
    try:
        stack.replica.wait_registered(stack.redis_url, f"{stack.namespace}:replica:replica-http")
        stack.add_router(admin_api_key=ADMIN_KEY)
        yield stack
    finally:
        stack.stop()


def _client(stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.router.base_url, api_key=API_KEY, max_retries=0)


def _grpc_tokens(stack, model: str) -> list[int]:
    address = f"127.0.0.1:{stack.router.router.port}"
    request = inference_pb2.GenerateRequest(
        model=model,
        prompt_token_ids=PROMPT,
        sampling=inference_pb2.SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True),
    )
    with grpc.insecure_channel(address) as channel:
        chunks = list(
            inference_pb2_grpc.InferenceStub(channel).Generate(
                request, timeout=60, metadata=key_metadata(API_KEY)
            )
        )
    return [t for chunk in chunks for t in chunk.token_ids]


def _admin(stack, path: str, body: dict, key: str | None = ADMIN_KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{stack.router.base_url}/{path}", json=body, headers=headers, timeout=150)


def _registry(stack) -> ReplicaLoad:
    client = redis.Redis.from_url(stack.redis_url)
    return ReplicaLoad.from_fields(client.hgetall(f"{stack.namespace}:replica:replica-http"))


def test_adapters_are_listed_with_their_parent_on_http_and_grpc(lora_stack):
    models = {m.id: m for m in _client(lora_stack).models.list().data}
    assert set(models) == {TINY_MODEL, "tiny-a"}
    assert models["tiny-a"].model_extra["parent"] == TINY_MODEL
    assert "parent" not in (models[TINY_MODEL].model_extra or {})
    address = f"127.0.0.1:{lora_stack.router.router.port}"
    with grpc.insecure_channel(address) as channel:
        listed = inference_pb2_grpc.InferenceStub(channel).ListModels(
            inference_pb2.ListModelsRequest(), timeout=10, metadata=key_metadata(API_KEY)
        )
    assert {(m.id, m.parent) for m in listed.models} == {(TINY_MODEL, ""), ("tiny-a", TINY_MODEL)}


def test_model_chooses_the_adapter_per_request_and_matches_the_engines_own_output(
    lora_stack, adapters
):
    from oss_serve.workers.engine.llm import LLM
    from oss_serve.workers.engine.sampling_params import SamplingParams
    from oss_serve.workers.lora.request import LoRARequest

    with_adapter = _grpc_tokens(lora_stack, "tiny-a")
    base = _grpc_tokens(lora_stack, TINY_MODEL)
    assert with_adapter != base
    llm = LLM(TINY_MODEL, dtype="float32", device="cpu", enable_lora=True, max_lora_rank=8,
              skip_tokenizer_init=True, kv_cache_memory=16_000_000, max_model_len=1024)  # fmt: skip
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    prompt = {"prompt_token_ids": PROMPT}
    lora = LoRARequest("tiny-a", 1, str(adapters / "tiny-a"))
    assert llm.generate([prompt], params, lora_request=lora)[0].outputs[0].token_ids == with_adapter
    assert llm.generate([prompt], params)[0].outputs[0].token_ids == base
    reply = _client(lora_stack).completions.create(
        model="tiny-a", prompt=PROMPT, max_tokens=8, temperature=0
    )
    assert reply.model == "tiny-a" and reply.choices[0].text
    assert "tiny-a" in _registry(lora_stack).held_adapters  # reported for routing


def test_an_unknown_adapter_is_404_model_not_found_on_http_and_not_found_on_grpc(lora_stack):
    with pytest.raises(openai.NotFoundError) as caught:
        _client(lora_stack).completions.create(model="no-such-adapter", prompt=PROMPT, max_tokens=2)
    assert caught.value.body["code"] == "model_not_found"
    with pytest.raises(grpc.RpcError) as rpc:
        _grpc_tokens(lora_stack, "no-such-adapter")
    assert rpc.value.code() == grpc.StatusCode.NOT_FOUND


def test_runtime_load_and_unload_behind_the_admin_key(lora_stack, adapters):
    body = {"lora_name": "tiny-b", "lora_path": str(adapters / "tiny-b")}
    assert _admin(lora_stack, "load_lora_adapter", body, key=None).status_code == 401
    assert _admin(lora_stack, "load_lora_adapter", body, key=API_KEY).status_code == 401
    loaded = _admin(lora_stack, "load_lora_adapter", body)
    assert loaded.status_code == 200, loaded.text
    models = {m.id: m for m in _client(lora_stack).models.list().data}
    assert models["tiny-b"].model_extra["parent"] == TINY_MODEL
    assert _grpc_tokens(lora_stack, "tiny-b") != _grpc_tokens(lora_stack, TINY_MODEL)
    again = _admin(lora_stack, "load_lora_adapter", body)
    assert again.status_code == 400 and "already been loaded" in again.json()["error"]["message"]
    unloaded = _admin(lora_stack, "unload_lora_adapter", {"lora_name": "tiny-b"})
    assert unloaded.status_code == 200, unloaded.text
    assert "tiny-b" not in {m.id for m in _client(lora_stack).models.list().data}
    missing = _admin(lora_stack, "unload_lora_adapter", {"lora_name": "tiny-b"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize(
    ("name", "message"),
    [("too-big", "rank 16, above max_lora_rank=8"), ("corrupt", "not a readable safetensors")],
)
def test_a_bad_adapter_is_refused_with_its_reason_and_the_replica_keeps_serving(
    lora_stack, adapters, name, message
):
    reply = _admin(
        lora_stack, "load_lora_adapter", {"lora_name": name, "lora_path": str(adapters / name)}
    )
    assert reply.status_code == 400 and message in reply.json()["error"]["message"]
    deadline = time.monotonic() + 10
    while name in {m.id for m in _client(lora_stack).models.list().data}:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert len(_grpc_tokens(lora_stack, "tiny-a")) == 8  # still serving, adapters too
