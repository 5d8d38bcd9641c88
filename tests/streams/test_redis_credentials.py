"""Redis that asks for a password, and Redis behind TLS, end to end with real processes:
an `oss-serve replica` given the password apart from the URL (OSS_SERVE_REDIS_PASSWORD),
an `oss-serve router` reaching Redis over `rediss://` (TLS verified with a CA) with the
password in the URL, `oss-serve keys` and `oss-serve autoscale` on the same Redis; a
wrong password is refused without the password appearing anywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from urllib.parse import quote

import pytest

from tests.router.servers import RedisServer
from tests.router.stack import (
    generate,
    start_replica,
    start_router,
    wait_for_replicas,
    wait_for_router,
)
from tests.router.tls import TlsProxy, make_tls_material

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
PASSWORD = "redis-pw-Zq81/x:@secret"
OSS_SERVE = [sys.executable, "-m", "oss_serve.cli"]


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*OSS_SERVE, *args], capture_output=True, text=True, env={**os.environ, **env}, timeout=120
    )


def test_the_stack_serves_on_a_redis_that_requires_a_password_and_on_rediss(tmp_path):
    server = RedisServer(tmp_path / "redis", appendonly=False, password=PASSWORD).start()
    proxy = TlsProxy(make_tls_material(tmp_path / "tls"), server.port)
    namespace = f"cred-{uuid.uuid4().hex[:6]}"
    plain_url = f"redis://127.0.0.1:{server.port}/0"
    tls_url = (
        f"rediss://:{quote(PASSWORD, safe='')}@127.0.0.1:{proxy.port}/0"
        f"?ssl_ca_certs={tmp_path / 'tls' / 'test-ca.crt'}&ssl_cert_reqs=required"
    )
    by_env = {"OSS_SERVE_REDIS_PASSWORD": PASSWORD, "OSS_SERVE_REDIS_NAMESPACE": namespace}
    procs = []
    try:
        added = _cli("keys", "add", "ci", "--redis-url", tls_url, env=by_env)
        assert added.returncode == 0, added.stderr
        api_key = added.stdout.strip().splitlines()[0]
        replica = start_replica(plain_url, namespace, "replica-pw", tmp_path, env=by_env)
        router, address = start_router(
            tls_url, namespace, tmp_path, "router-tls", env={"OSS_SERVE_REQUIRE_API_KEY": "true"}
        )
        procs = [replica, router]
        wait_for_replicas(server.url, namespace, ["replica-pw"], procs)
        wait_for_router(address, api_key=api_key)
        tokens, finish, _ = generate(address, [11, 12, 13], max_tokens=3, api_key=api_key)
        assert len(tokens) == 3 and finish == "length"
        listed = _cli("keys", "list", "--redis-url", plain_url, env=by_env)
        assert listed.returncode == 0 and "ci" in listed.stdout
        policy = tmp_path / "policy.yaml"
        policy.write_text(
            "namespace: t\nworkload: RayCluster\nray_cluster: rc\npools:\n"
            "  - {name: default, min_replicas: 0, max_replicas: 3, cost_per_replica_hour: 2,"
            " base_ttft_s: 0.5}\n"
        )
        scaled = _cli(
            "autoscale", "--policy", str(policy), "--dry-run", "--once",
            env={**by_env, "OSS_SERVE_REDIS_URL": plain_url, "KUBECONFIG": str(tmp_path / "none"),
                 "KUBERNETES_SERVICE_HOST": ""},
        )  # fmt: skip
        assert scaled.returncode == 0, scaled.stderr
        assert json.loads(scaled.stdout.strip().splitlines()[-1])[0]["pool"] == "default"
        wrong = _cli("keys", "list", "--redis-url", plain_url, env={
            "OSS_SERVE_REDIS_PASSWORD": "not-the-password"})  # fmt: skip
        assert wrong.returncode != 0 and "Authentication" in wrong.stderr
        for output in (wrong.stdout + wrong.stderr, *(p.log() for p in procs)):
            assert PASSWORD not in output and quote(PASSWORD, safe="") not in output
    finally:
        for proc in procs:
            proc.stop()
        proxy.close()
        server.stop()
