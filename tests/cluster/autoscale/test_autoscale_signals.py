"""The autoscaler's signals read from a real redis-server: streams, consumer groups, hashes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import redis

from oss_serve.cluster.autoscale.autoscaler import Autoscaler, AutoscalerConfig, PoolSpec
from oss_serve.cluster.autoscale.k8s import DryRunScaler
from oss_serve.cluster.autoscale.metrics import AutoscalerMetrics
from oss_serve.cluster.autoscale.signals import read_signals, read_stream, redis_now_s
from oss_serve.cluster.replica.probe import check
from oss_serve.common.settings import Settings
from oss_serve.streams.keys import CONSUMER_GROUP, RedisKeys
from oss_serve.streams.registry import ReplicaLoad as RegistryEntry
from tests.router.servers import redis_server

pytestmark = pytest.mark.integration
__all__ = ["redis_server"]


@pytest.fixture
def client(redis_server):
    redis_server.flush()
    conn = redis.Redis.from_url(redis_server.url)
    yield conn
    conn.close()


def register(conn: redis.Redis, keys: RedisKeys, entry: RegistryEntry, ttl_s: int = 30) -> None:
    """What a replica's heartbeat writes (streams/registry.py's fields)."""
    conn.sadd(keys.replicas, entry.replica_id)
    conn.hset(keys.replica(entry.replica_id), mapping=entry.to_fields())
    conn.expire(keys.replica(entry.replica_id), ttl_s)


def fill(conn: redis.Redis, stream: str, ages_s: list[float], deliver: int, finish: int) -> None:
    """Entries aged as given (IDs are ms stamps); `deliver` read by a replica, `finish` of
    those acknowledged and deleted, as replicas do when a request completes."""
    now_ms = int(redis_now_s(conn) * 1000)
    for i, age in enumerate(sorted(ages_s, reverse=True)):
        conn.xadd(stream, {"n": str(i)}, id=f"{now_ms - int(age * 1000)}-{i}")
    conn.xgroup_create(stream, CONSUMER_GROUP, id="0")
    if deliver:
        delivered = conn.xreadgroup(CONSUMER_GROUP, "replica-x", {stream: ">"}, count=deliver)
        ids = [entry_id for entry_id, _ in delivered[0][1]][:finish]
        if ids:
            conn.xack(stream, CONSUMER_GROUP, *ids)
            conn.xdel(stream, *ids)


def test_stream_backlog_counts_undelivered_entries_and_the_oldest_wait(client):
    keys = RedisKeys("t")
    stream = keys.request_stream("r1", "interactive")
    fill(client, stream, ages_s=[9.0, 7.0, 5.0, 3.0, 1.0], deliver=3, finish=1)
    backlog = read_stream(client, stream, "r1", "interactive")
    assert (backlog.length, backlog.pending, backlog.undelivered) == (4, 2, 2)
    age_s = redis_now_s(client) - backlog.oldest_undelivered_ms / 1000
    assert 2.9 <= age_s <= 3.5  # the 9, 7, 5 s old entries were delivered; 3 s is next


def test_a_stream_without_a_consumer_group_is_all_undelivered(client):
    keys = RedisKeys("t")
    stream = keys.overflow_stream("batch")
    now_ms = int(redis_now_s(client) * 1000)
    client.xadd(stream, {"n": "0"}, id=f"{now_ms - 4000}-0")
    client.xadd(stream, {"n": "1"}, id=f"{now_ms - 1000}-0")
    backlog = read_stream(client, stream, "overflow", "batch")
    assert backlog.undelivered == 2
    assert 3.9 <= redis_now_s(client) - backlog.oldest_undelivered_ms / 1000 <= 4.5


def test_signals_split_backlog_by_pool_and_send_orphans_and_overflow_to_shared(client):
    keys = RedisKeys("t")
    now = redis_now_s(client)
    register(
        client,
        keys,
        RegistryEntry("a-1", pool="a100", running=5, waiting=2, max_running=32, heartbeat_ts=now),
    )
    register(
        client, keys, RegistryEntry("h-1", pool="h100", running=1, max_running=64, heartbeat_ts=now)
    )
    client.sadd(keys.replicas, "gone-1")  # registered once; its hash expired (dead replica)
    fill(client, keys.request_stream("a-1", "interactive"), [6.0, 4.0, 2.0], deliver=1, finish=0)
    fill(client, keys.request_stream("h-1", "batch"), [1.0], deliver=1, finish=1)
    fill(client, keys.request_stream("gone-1", "interactive"), [8.0, 8.0], deliver=0, finish=0)
    fill(client, keys.overflow_stream("interactive"), [3.0], deliver=0, finish=0)
    client.set(keys.request_stream("a-1", "noise"), "not a stream")  # other types are skipped

    signals = read_signals(client, keys)

    assert abs(signals.now_s - time.time()) < 5
    assert {
        r.replica_id: (r.pool, r.running, r.waiting, r.max_running) for r in signals.replicas
    } == {
        "a-1": ("a100", 5, 2, 32),
        "h-1": ("h100", 1, 0, 64),
    }
    a100 = signals.backlog_by_pool["a100"]
    assert a100.undelivered == 2 and 3.9 <= a100.oldest_wait_s <= 4.6
    assert "h100" not in signals.backlog_by_pool or signals.backlog_by_pool["h100"].undelivered == 0
    assert signals.shared_backlog.undelivered == 3  # 2 orphaned + 1 overflow
    assert 7.9 <= signals.shared_backlog.oldest_wait_s <= 8.6


def test_autoscaler_round_on_real_redis_scales_the_cheapest_pool_for_a_late_backlog(client):
    keys = RedisKeys("t")
    now = redis_now_s(client)
    register(
        client,
        keys,
        RegistryEntry("a-1", pool="a100", running=30, max_running=32, heartbeat_ts=now),
    )
    fill(client, keys.overflow_stream("interactive"), [10.0] * 40, deliver=0, finish=0)
    config = AutoscalerConfig(
        namespace="t",
        ray_cluster="rc",
        pools=[
            PoolSpec(
                name="a100",
                min_replicas=1,
                max_replicas=4,
                cost_per_replica_hour=3,
                base_ttft_s=0.4,
            ),
            PoolSpec(
                name="l4", min_replicas=0, max_replicas=4, cost_per_replica_hour=1, base_ttft_s=0.8
            ),
        ],
    )
    scaler = DryRunScaler({"a100": 1, "l4": 0})
    metrics = AutoscalerMetrics()
    decisions = Autoscaler(config, client, keys, scaler, metrics=metrics).step()
    desired = {d.pool: d.desired for d in decisions}
    # 70 requests: a100's one replica carries 25.6 at 80 %; l4 (cheaper, 64 slots by default
    # until it reports) takes the rest
    assert desired == {"a100": 1, "l4": 1}
    assert scaler.current() == desired
    sample = metrics.registry.get_sample_value
    assert sample("oss_serve:autoscaler_desired_replicas", {"pool": "l4"}) == 1
    assert sample("oss_serve:autoscaler_ready_replicas", {"pool": "a100"}) == 1
    assert sample("oss_serve:autoscaler_queue_backlog", {"scope": "shared"}) == 40
    assert sample("oss_serve:autoscaler_oldest_wait_seconds", {"scope": "shared"}) >= 9.9


def test_replica_probe_follows_the_heartbeat(client, redis_server):
    keys = RedisKeys("t")
    settings = Settings(redis_url=redis_server.url, redis_namespace="t", replica_id="a-1")
    assert check(settings, max_age_s=60)[0] is False  # not registered yet
    register(client, keys, RegistryEntry("a-1", pool="a100", heartbeat_ts=redis_now_s(client)))
    assert check(settings, max_age_s=60)[0] is True
    register(
        client, keys, RegistryEntry("a-1", pool="a100", heartbeat_ts=redis_now_s(client) - 120)
    )
    healthy, message = check(settings, max_age_s=60)
    assert not healthy and "last heartbeat" in message


def test_cli_dry_run_prints_one_round_of_decisions(client, redis_server, tmp_path):
    keys = RedisKeys("cli")
    fill(client, keys.overflow_stream("interactive"), [5.0] * 10, deliver=0, finish=0)
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "namespace: t\nworkload: RayCluster\nray_cluster: rc\n"
        "pools:\n  - {name: a100, min_replicas: 0, max_replicas: 3, cost_per_replica_hour: 2, base_ttft_s: 0.5}\n"
    )
    env = {
        **os.environ,
        "OSS_SERVE_REDIS_URL": redis_server.url,
        "OSS_SERVE_REDIS_NAMESPACE": "cli",
        "KUBECONFIG": str(tmp_path / "no-kubeconfig"),
        "KUBERNETES_SERVICE_HOST": "",
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "oss_serve.cli",
            "autoscale",
            "--policy",
            str(policy),
            "--dry-run",
            "--once",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    decisions = json.loads(result.stdout.strip().splitlines()[-1])
    assert decisions == [
        {"pool": "a100", "current": 0, "desired": 1, "reason": decisions[0]["reason"]}
    ]
    assert "over SLO" in decisions[0]["reason"] or "demand" in decisions[0]["reason"]


def test_cli_names_the_bad_field_of_a_policy_file(tmp_path, redis_server):
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "workload: RayCluster\npools:\n  - {name: a, min_replicas: 2, max_replicas: 1, cost_per_replica_hour: 1, base_ttft_s: 0}\n"
    )
    env = {**os.environ, "OSS_SERVE_REDIS_URL": redis_server.url}
    result = subprocess.run(
        [sys.executable, "-m", "oss_serve.cli", "autoscale", "--policy", str(policy), "--once"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2
    assert "ray_cluster" in result.stderr or "min_replicas" in result.stderr
