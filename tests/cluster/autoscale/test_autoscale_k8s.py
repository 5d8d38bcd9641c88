"""The autoscaler's Kubernetes calls, made by the real `kubernetes` client over HTTP.

No API server runs on these machines, so a loopback HTTP server answers with responses
shaped like the API server's (tests/cluster/autoscale/traces/k8s/) and records each request: the test
checks the method, path, content type and body the client sent, and how the scaler reads
the answers.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from oss_serve.cluster.autoscale.k8s import DeploymentScaler, RayClusterScaler, ScaleError

pytestmark = pytest.mark.integration
RECORDED = Path(__file__).resolve().parent / "traces" / "k8s"
RAY_PATH = "/apis/ray.io/v1/namespaces/serving/rayclusters/oss-serve-replicas"


def recorded(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((RECORDED / name).read_text())
    return data


@dataclass
class FakeApiServer:
    """Answers (method, path) from a table; keeps every request it saw."""

    routes: dict[tuple[str, str], tuple[int, dict[str, Any]]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.split("?", 1)[0]
                server.requests.append(
                    {
                        "method": self.command,
                        "path": path,
                        "content_type": self.headers.get("Content-Type"),
                        "body": json.loads(body) if body else None,
                    }
                )
                status, payload = server.routes.get((self.command, path), (404, {"code": 404}))
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PATCH = do_PUT = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def api() -> Iterator[tuple[FakeApiServer, k8s.ApiClient]]:
    fake = FakeApiServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), fake.handler())
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    config = k8s.Configuration(host=f"http://127.0.0.1:{httpd.server_address[1]}")
    api_client = k8s.ApiClient(config)
    try:
        yield fake, api_client
    finally:
        api_client.close()
        httpd.shutdown()
        httpd.server_close()


def test_raycluster_scaler_reads_worker_group_replicas(api):
    fake, api_client = api
    fake.routes[("GET", RAY_PATH)] = (200, recorded("raycluster.json"))
    scaler = RayClusterScaler(k8s.CustomObjectsApi(api_client), "serving", "oss-serve-replicas")
    assert scaler.current() == {"a100": 2, "h100": 1, "rtx4090": 0}


def test_raycluster_scaler_patches_replicas_by_index_with_a_name_test(api):
    fake, api_client = api
    cluster = recorded("raycluster.json")
    fake.routes[("GET", RAY_PATH)] = (200, cluster)
    fake.routes[("PATCH", RAY_PATH)] = (200, cluster)
    scaler = RayClusterScaler(k8s.CustomObjectsApi(api_client), "serving", "oss-serve-replicas")
    scaler.apply({"rtx4090": 3, "a100": 1})
    patch = fake.requests[-1]
    assert patch["method"] == "PATCH"
    assert patch["content_type"] == "application/json-patch+json"
    assert patch["body"] == [
        {"op": "test", "path": "/spec/workerGroupSpecs/0/groupName", "value": "a100"},
        {"op": "replace", "path": "/spec/workerGroupSpecs/0/replicas", "value": 1},
        {"op": "test", "path": "/spec/workerGroupSpecs/2/groupName", "value": "rtx4090"},
        {"op": "replace", "path": "/spec/workerGroupSpecs/2/replicas", "value": 3},
    ]


def test_raycluster_scaler_refuses_a_pool_without_worker_group_and_sends_no_patch(api):
    fake, api_client = api
    fake.routes[("GET", RAY_PATH)] = (200, recorded("raycluster.json"))
    scaler = RayClusterScaler(k8s.CustomObjectsApi(api_client), "serving", "oss-serve-replicas")
    with pytest.raises(ScaleError, match="l4"):
        scaler.apply({"l4": 2})
    assert [r["method"] for r in fake.requests] == ["GET"]


def test_raycluster_patch_rejected_by_the_server_raises(api):
    """The list moved between read and patch: the `test` op fails, nothing is scaled."""
    fake, api_client = api
    fake.routes[("GET", RAY_PATH)] = (200, recorded("raycluster.json"))
    fake.routes[("PATCH", RAY_PATH)] = (422, recorded("patch-test-failed.json"))
    scaler = RayClusterScaler(k8s.CustomObjectsApi(api_client), "serving", "oss-serve-replicas")
    with pytest.raises(ApiException) as err:
        scaler.apply({"h100": 4})
    assert err.value.status == 422


def test_deployment_scaler_reads_and_patches_the_scale_subresource(api):
    fake, api_client = api
    path = "/apis/apps/v1/namespaces/serving/deployments/oss-serve-replica-a100/scale"
    scale = recorded("deployment-scale.json")
    fake.routes[("GET", path)] = (200, scale)
    fake.routes[("PATCH", path)] = (200, {**scale, "spec": {"replicas": 5}})
    scaler = DeploymentScaler(
        k8s.AppsV1Api(api_client), "serving", {"a100": "oss-serve-replica-a100"}
    )
    assert scaler.current() == {"a100": 3}
    scaler.apply({"a100": 5})
    patch = fake.requests[-1]
    assert (patch["method"], patch["path"]) == ("PATCH", path)
    assert patch["body"] == {"spec": {"replicas": 5}}
    assert patch["content_type"] in (
        "application/strategic-merge-patch+json",
        "application/merge-patch+json",
    )


def test_deployment_scaler_refuses_an_unknown_pool(api):
    fake, api_client = api
    scaler = DeploymentScaler(k8s.AppsV1Api(api_client), "serving", {"a100": "x"})
    with pytest.raises(ScaleError, match="h100"):
        scaler.apply({"h100": 1})
    assert fake.requests == []
