"""Kubernetes probe of a replica: is its heartbeat in the Redis registry fresh?

A replica keeps `{ns}:replica:{replica_id}` alive with `heartbeat_ts` (streams/keys.py,
notes/CONTRACTS.md); this checks that contract from outside the replica process, so a replica
whose engine loop hangs is restarted even though its process still runs.

`python -m oss_serve.cluster.replica.probe --max-age-s 60` reads OSS_SERVE_REDIS_URL,
OSS_SERVE_REDIS_NAMESPACE and OSS_SERVE_REPLICA_ID (the chart sets it to the pod name) and
exits 0 when the heartbeat is at most that old, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys

import redis

from oss_serve.cluster.autoscale.signals import redis_now_s
from oss_serve.common.settings import Settings, load_settings
from oss_serve.streams.keys import RedisKeys
from oss_serve.streams.redis_client import connect_from


def heartbeat_age_s(client: redis.Redis, keys: RedisKeys, replica_id: str) -> float | None:
    """Seconds since the replica's last heartbeat (Redis clock), None when not registered."""
    raw = client.hget(keys.replica(replica_id), "heartbeat_ts")
    if raw is None:
        return None
    return redis_now_s(client) - float(raw)


def check(settings: Settings, max_age_s: float) -> tuple[bool, str]:
    if settings.replica_id is None:
        return False, "OSS_SERVE_REPLICA_ID is not set"
    if settings.redis_url is None:
        return False, "OSS_SERVE_REDIS_URL is not set"
    client = connect_from(settings, blocking=True, socket_timeout_s=3)
    try:
        age = heartbeat_age_s(client, RedisKeys(settings.redis_namespace), settings.replica_id)
    except redis.RedisError as err:
        return False, f"redis: {type(err).__name__}"
    finally:
        client.close()
    if age is None:
        return False, f"replica {settings.replica_id} is not registered"
    if age > max_age_s:
        return False, f"replica {settings.replica_id}: last heartbeat {age:.1f}s ago"
    return True, f"replica {settings.replica_id}: heartbeat {age:.1f}s ago"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-age-s", type=float, required=True)
    args = parser.parse_args(argv)
    healthy, message = check(load_settings(), args.max_age_s)
    print(message, file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
