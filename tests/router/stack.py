"""The serving stack as real processes: `oss-serve replica` and `oss-serve router`
subprocesses against a real redis-server, and a plain gRPC client."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import grpc
import redis

from oss_serve.protos import inference_pb2, inference_pb2_grpc
from oss_serve.streams.keys import RedisKeys
from tests.router.servers import free_port

OSS_SERVE = [sys.executable, "-m", "oss_serve.cli"]
TINY_MODEL = "gpt-oss-tiny"
CLUSTER_TOKEN = "oss-cluster-test-token-of-the-router-tests"
FAST_HEARTBEATS = {
    "OSS_SERVE_HEARTBEAT_INTERVAL_S": "0.2",
    "OSS_SERVE_HEARTBEAT_TTL_S": "1.0",
    "OSS_SERVE_KV_SNAPSHOT_INTERVAL_S": "0.2",
    "OSS_SERVE_LOG_FORMAT": "json",
    "OSS_SERVE_CLUSTER_TOKEN": CLUSTER_TOKEN,
}


def _env(namespace: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(FAST_HEARTBEATS)
    env.update({"OMP_NUM_THREADS": "1", "OSS_SERVE_REDIS_NAMESPACE": namespace})
    env.update(extra or {})
    return env


class Proc:
    """A subprocess with its log file; stopped by its own pid only."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str]) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_replica(
    redis_url: str,
    namespace: str,
    replica_id: str,
    folder: Path,
    *,
    model: str = TINY_MODEL,
    extra_args: Iterable[str] = (),
    env: dict[str, str] | None = None,
) -> Proc:
    args = [
        *OSS_SERVE, "replica", "--model", model, "--redis-url", redis_url,
        "--replica-id", replica_id, "--max-model-len", "1024", "--kv-cache-memory", "16000000",
        *extra_args,
    ]  # fmt: skip
    return Proc(args, folder / f"{replica_id}.log", _env(namespace, env))


def start_router(
    redis_url: str,
    namespace: str,
    folder: Path,
    name: str,
    *,
    extra_args: Iterable[str] = (),
    env: dict[str, str] | None = None,
) -> tuple[Proc, str]:
    port = free_port()
    args = [
        *OSS_SERVE,
        "router",
        "--redis-url",
        redis_url,
        "--grpc-port",
        str(port),
        "--link-port",
        "0",
        "--http-port",
        "0",
        *extra_args,
    ]
    return Proc(args, folder / f"{name}.log", _env(namespace, env)), f"127.0.0.1:{port}"


def http_url(router: Proc, timeout_s: float = 60.0) -> str:
    """The HTTP API's URL an `oss-serve router` started with `--http-port 0` printed."""
    deadline = time.monotonic() + timeout_s
    while not (found := re.search(r"serving HTTP on (http://[\d.]+:\d+)", router.log())):
        if not router.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"no HTTP API:\n{router.log()[-2000:]}")
        time.sleep(0.1)
    return found.group(1)


def prefix_queries(
    client: redis.Redis, namespace: str, replica_ids: Iterable[str] | None = None
) -> dict[str, int]:
    """Prompt tokens each replica's engine has looked up in its prefix cache, from its last
    load report (every registered replica unless `replica_ids` is given)."""
    keys = RedisKeys(namespace)
    if replica_ids is None:
        replica_ids = sorted(m.decode() for m in client.smembers(keys.replicas))
    return {r: int(client.hget(keys.replica(r), "prefix_queries") or 0) for r in replica_ids}


def wait_for_replicas(
    redis_url: str, namespace: str, ids: Iterable[str], procs: Iterable[Proc], timeout_s: float = 90
) -> None:
    client = redis.Redis.from_url(redis_url)
    wanted = set(ids)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = {r for r in wanted if client.exists(f"{namespace}:replica:{r}")}
        if alive == wanted:
            return
        for proc in procs:
            if not proc.alive():
                raise RuntimeError(f"process exited early:\n{proc.log()[-3000:]}")
        time.sleep(0.1)
    raise TimeoutError(f"replicas {wanted} did not register")


def key_metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    """gRPC metadata presenting an API key (none when `api_key` is None)."""
    return () if api_key is None else (("authorization", f"Bearer {api_key}"),)


def channel(address: str, credentials: grpc.ChannelCredentials | None = None) -> grpc.Channel:
    """A channel with the official client, over TLS when `credentials` are given."""
    if credentials is None:
        return grpc.insecure_channel(address)
    return grpc.secure_channel(address, credentials)


def wait_for_router(
    address: str,
    replicas: int = 1,
    timeout_s: float = 30,
    *,
    api_key: str | None = None,
    credentials: grpc.ChannelCredentials | None = None,
) -> None:
    """Until the router answers ListModels and sees `replicas` replicas' model."""
    deadline = time.monotonic() + timeout_s
    with channel(address, credentials) as open_channel:
        stub = inference_pb2_grpc.InferenceStub(open_channel)
        request = inference_pb2.ListModelsRequest()
        while time.monotonic() < deadline:
            try:
                if stub.ListModels(request, timeout=1, metadata=key_metadata(api_key)).models:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"router {address} not ready")


def generate(
    address: str,
    prompt: list[int],
    *,
    max_tokens: int = 16,
    session_key: str = "",
    timeout_s: float = 60,
    on_chunk: object = None,
    sampling: inference_pb2.SamplingParams | None = None,
    api_key: str | None = None,
    credentials: grpc.ChannelCredentials | None = None,
) -> tuple[list[int], str, list[inference_pb2.GenerateResponse]]:
    """Generate (greedy unless `sampling` is given); returns (token ids, finish reason,
    the raw chunks)."""
    request = inference_pb2.GenerateRequest(
        prompt_token_ids=prompt,
        sampling=sampling or inference_pb2.SamplingParams(temperature=0.0, max_tokens=max_tokens),
        options=inference_pb2.RequestOptions(session_key=session_key),
    )
    chunks = []
    with channel(address, credentials) as open_channel:
        stub = inference_pb2_grpc.InferenceStub(open_channel)
        for chunk in stub.Generate(request, timeout=timeout_s, metadata=key_metadata(api_key)):
            chunks.append(chunk)
            if callable(on_chunk):
                on_chunk(chunk)
    tokens = [t for c in chunks for t in c.token_ids]
    return tokens, chunks[-1].finish_reason if chunks else "", chunks


def queue_is_empty(redis_url: str, namespace: str, wait_s: float = 5.0) -> bool:
    """No request entry left in any stream, delivered or not (replicas acknowledge just
    after the router has the finish, so this waits up to wait_s for that)."""
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + wait_s
    while True:
        left = {k: client.xlen(k) for k in client.scan_iter(f"{namespace}:req:*") if client.xlen(k)}
        if not left:
            return True
        if time.monotonic() > deadline:
            print(f"entries left in Redis: {left}")
            return False
        time.sleep(0.05)
