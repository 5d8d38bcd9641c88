"""Render tests of the chart's security: the cluster token from a Secret in every oss-serve
process that needs it, the replica link on its own port that only replica pods may reach,
and TLS from cert-manager Secrets (type kubernetes.io/tls) mounted in routers and replicas."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helm.render import VALUE_SETS, of_kind, pod_templates, render, requires_helm

pytestmark = [pytest.mark.unit, requires_helm]
VALUE_IDS = [p.name.removesuffix("-values.yaml") for p in VALUE_SETS]
TLS_ON = ("security.tls.enabled=true",)


def _oss_serve_containers(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """where -> the router or replica container of every pod that runs one."""
    found = {}
    for where, template in pod_templates(objects):
        for container in template["spec"]["containers"]:
            if container.get("args", [None])[0] in ("router", "replica"):
                found[f"{where}/{container['name']}"] = container
    return found


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in container.get("env", [])}


def _router(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return next(
        d for d in of_kind(objects, "Deployment") if d["metadata"]["name"] == "oss-serve-router"
    )


@pytest.mark.parametrize("values", VALUE_SETS, ids=VALUE_IDS)
def test_should_give_every_router_and_replica_the_cluster_token_from_its_secret(values):
    containers = _oss_serve_containers(render(values))
    assert any("router" in where for where in containers)
    assert any(c["args"][0] == "replica" for c in containers.values())
    for where, container in containers.items():
        token = _env(container)["OSS_SERVE_CLUSTER_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert token == {"name": "oss-serve-cluster-token", "key": "cluster-token"}, where


@pytest.mark.parametrize("values", VALUE_SETS, ids=VALUE_IDS)
def test_should_admit_only_replica_pods_to_the_link_port(values):
    objects = render(values)
    router = _router(objects)["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in router["ports"]}
    assert ports["link"] == 50052 and ports["grpc"] == 50051
    assert _env(router)["OSS_SERVE_LINK_PORT"]["value"] == "50052"
    policy = next(
        p for p in of_kind(objects, "NetworkPolicy") if p["metadata"]["name"] == "oss-serve-router"
    )
    rules_with_link = [
        rule
        for rule in policy["spec"]["ingress"]
        if {"port": "link", "protocol": "TCP"} in rule["ports"]
    ]
    (rule,) = rules_with_link
    assert rule["ports"] == [{"port": "link", "protocol": "TCP"}]
    (peer,) = rule["from"]
    assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "replica"
    assert "namespaceSelector" not in peer
    service = next(
        s for s in of_kind(objects, "Service") if s["metadata"]["name"] == "oss-serve-router"
    )
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]}["link"] == 50052


def test_should_mount_cert_manager_secrets_and_serve_tls_when_tls_is_enabled():
    objects = render(VALUE_SETS[0], sets=TLS_ON)
    router = _router(objects)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in router["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "oss-serve-router-tls"
    container = router["containers"][0]
    assert {"name": "tls", "mountPath": "/etc/oss-serve/tls", "readOnly": True} in container[
        "volumeMounts"
    ]
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    for where, container in _oss_serve_containers(objects).items():
        env = _env(container)
        assert env["OSS_SERVE_TLS_CERT"]["value"] == "/etc/oss-serve/tls/tls.crt", where
        assert env["OSS_SERVE_TLS_KEY"]["value"] == "/etc/oss-serve/tls/tls.key", where
        assert env["OSS_SERVE_TLS_CA"]["value"] == "/etc/oss-serve/tls/ca.crt", where
        assert env["OSS_SERVE_TLS_SERVER_NAME"]["value"] == "oss-serve-router-link", where
        assert any(m["name"] == "tls" for m in container["volumeMounts"]), where
    replica_secrets = {
        v["secret"]["secretName"]
        for where, template in pod_templates(objects)
        for v in template["spec"].get("volumes", [])
        if v["name"] == "tls" and "router" not in where
    }
    assert replica_secrets == {"oss-serve-replica-tls"}


def test_should_render_no_tls_when_tls_is_off():
    objects = render(VALUE_SETS[0])
    for where, container in _oss_serve_containers(objects).items():
        assert not any(name.startswith("OSS_SERVE_TLS_") for name in _env(container)), where
    router = _router(objects)["spec"]["template"]["spec"]["containers"][0]
    assert router["readinessProbe"]["httpGet"]["scheme"] == "HTTP"
