"""Render tests of the oss-serve chart: every value set, named by the behaviour they prove."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from oss_serve.cluster.autoscale.autoscaler import AutoscalerConfig
from oss_serve.cluster.ray.placement import pool_resource
from tests.helm.render import (
    CHART,
    NAMESPACE,
    VALUE_SETS,
    of_kind,
    pod_templates,
    render,
    render_text,
    requires_helm,
)

pytestmark = [pytest.mark.unit, requires_helm]
VALUE_IDS = [p.name.removesuffix("-values.yaml") for p in VALUE_SETS]
SECRET_ENV = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY|REDIS_URL", re.IGNORECASE)


def chart_values(path) -> dict[str, Any]:
    """The defaults overlaid with one value set (maps merge, as helm merges them)."""

    def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for key, value in over.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
            else:
                out[key] = value
        return out

    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    return merge(defaults, yaml.safe_load(path.read_text()) or {})


def enabled_pools(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: p for n, p in values["pools"].items() if p and p.get("enabled", True)}


def containers(template: dict[str, Any]) -> list[dict[str, Any]]:
    spec = template["spec"]
    return spec.get("initContainers", []) + spec["containers"]


@pytest.mark.parametrize("values", VALUE_SETS, ids=VALUE_IDS)
def test_every_pod_runs_non_root_with_a_locked_down_security_context(values):
    for where, template in pod_templates(render(values)):
        pod = template["spec"]["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] >= 1000, where
        for c in containers(template):
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True, (where, c["name"])
            assert sc["allowPrivilegeEscalation"] is False, (where, c["name"])
            assert sc["readOnlyRootFilesystem"] is True, (where, c["name"])
            assert sc.get("privileged", False) is False, (where, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (where, c["name"])


@pytest.mark.parametrize("values", VALUE_SETS, ids=VALUE_IDS)
def test_every_container_has_requests_and_limits(values):
    for where, template in pod_templates(render(values)):
        for c in containers(template):
            resources = c["resources"]
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources[kind]), (where, c["name"], kind)


@pytest.mark.parametrize("values", VALUE_SETS, ids=VALUE_IDS)
def test_gpu_pods_request_tp_times_ep_gpus_and_select_their_pool(values):
    pools = enabled_pools(chart_values(values))
    seen = set()
    for where, template in pod_templates(render(values)):
        pool = template["metadata"]["labels"].get("oss-serve/pool")
        gpu_containers = [
            c
            for c in template["spec"]["containers"]
            if "nvidia.com/gpu" in c["resources"]["limits"]
        ]
        if pool is None:
            assert not gpu_containers, f"{where} holds GPUs but belongs to no pool"
            continue
        seen.add(pool)
        want = pools[pool]["tensorParallelSize"] * pools[pool]["expertParallelSize"]
        assert len(gpu_containers) == 1, where
        resources = gpu_containers[0]["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == str(want), where
        assert resources["requests"]["nvidia.com/gpu"] == str(want), where
        spec = template["spec"]
        assert spec["nodeSelector"]["nvidia.com/gpu.product"] == pools[pool]["gpuProduct"], where
        assert any(t.get("key") == "nvidia.com/gpu" for t in spec["tolerations"]), where
        shm = next(v for v in spec["volumes"] if v["name"] == "dshm")
        assert shm["emptyDir"]["medium"] == "Memory", where
        mounts = {m["mountPath"] for m in gpu_containers[0]["volumeMounts"]}
        assert "/dev/shm" in mounts, where
    assert seen == set(pools), "every enabled pool gets GPU pods"


def env_of(container: dict[str, Any]) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def gpus_of(container: dict[str, Any]) -> int:
    return int(container["resources"].get("limits", {}).get("nvidia.com/gpu", 0))


def ray_start_resources(params: dict[str, str]) -> dict[str, float]:
    """`ray start --resources` as KubeRay passes it: a shell-quoted JSON object."""
    return json.loads(params["resources"].strip('"').replace('\\"', '"'))


@pytest.mark.parametrize("values", VALUE_SETS, ids=VALUE_IDS)
def test_every_engine_runs_where_its_gpus_are_with_one_gpu_per_rank(values):
    pools = enabled_pools(chart_values(values))
    engines: dict[str, int] = {}
    for obj in render(values):
        if obj["kind"] == "Deployment" and "oss-serve/pool" in obj["metadata"]["labels"]:
            pool = obj["metadata"]["labels"]["oss-serve/pool"]
            (replica,) = obj["spec"]["template"]["spec"]["containers"]
            assert "OSS_SERVE_RAY_ENGINE" not in env_of(replica), pool
            engines[pool] = gpus_of(replica)  # the engine runs in this container
        elif obj["kind"] == "RayCluster":
            for group in obj["spec"]["workerGroupSpecs"]:
                pool = group["groupName"]
                ray_worker, replica = group["template"]["spec"]["containers"]
                env = env_of(replica)
                # the driver holds no GPU: its engine is Ray rank actors of this pool
                assert gpus_of(replica) == 0, pool
                assert env["OSS_SERVE_RAY_ENGINE"] == "true", pool
                assert env["OSS_SERVE_REPLICA_POOL"] == pool
                assert ray_start_resources(group["rayStartParams"]) == {pool_resource(pool): 1000}
                assert group["rayStartParams"]["num-gpus"] == str(gpus_of(ray_worker)), pool
                engines[pool] = gpus_of(ray_worker)
    ranks = {n: p["tensorParallelSize"] * p["expertParallelSize"] for n, p in pools.items()}
    assert engines == ranks


@pytest.mark.parametrize("values", VALUE_SETS, ids=VALUE_IDS)
def test_each_replica_pool_has_a_disruption_budget_selecting_its_pods(values):
    objects = render(values)
    pools = enabled_pools(chart_values(values))
    budgets = {
        p["spec"]["selector"]["matchLabels"].get("oss-serve/pool"): p
        for p in of_kind(objects, "PodDisruptionBudget")
    }
    for pool in pools:
        assert budgets[pool]["spec"]["maxUnavailable"] == 1, pool
    for where, template in pod_templates(objects):
        pool = template["metadata"]["labels"].get("oss-serve/pool")
        if pool is not None:
            selector = budgets[pool]["spec"]["selector"]["matchLabels"]
            assert selector.items() <= template["metadata"]["labels"].items(), where


@pytest.mark.parametrize("values", VALUE_SETS, ids=VALUE_IDS)
def test_replica_settings_come_from_the_pool(values):
    pools = enabled_pools(chart_values(values))
    for where, template in pod_templates(render(values)):
        pool = template["metadata"]["labels"].get("oss-serve/pool")
        if pool is None:
            continue
        replica = next(c for c in template["spec"]["containers"] if c["name"] == "replica")
        env = {e["name"]: e.get("value") for e in replica["env"]}
        assert env["OSS_SERVE_REPLICA_POOL"] == pool, where
        assert env["OSS_SERVE_TENSOR_PARALLEL_SIZE"] == str(pools[pool]["tensorParallelSize"])
        assert env["OSS_SERVE_EXPERT_PARALLEL_SIZE"] == str(pools[pool]["expertParallelSize"])
        assert env["OSS_SERVE_MAX_MODEL_LEN"] == str(pools[pool]["maxModelLen"])
        assert env["OSS_SERVE_GPU_MEMORY_UTILIZATION"] == str(pools[pool]["gpuMemoryUtilization"])


@pytest.mark.parametrize("values", VALUE_SETS, ids=VALUE_IDS)
def test_no_secret_value_is_rendered(values):
    objects = render(values)
    assert not of_kind(objects, "Secret"), "the chart must only reference existing Secrets"
    for where, template in pod_templates(objects):
        for c in containers(template):
            for env in c.get("env", []):
                if not SECRET_ENV.search(env["name"]):
                    continue
                if "valueFrom" in env:
                    assert "secretKeyRef" in env["valueFrom"], (where, env["name"])
                else:  # only a URL composed from a secret-backed variable
                    url = env["value"]
                    assert re.fullmatch(
                        r"redis(\+sentinel)?://:\$\(OSS_SERVE_REDIS_PASSWORD\)@[^ ]+", url
                    ), (where, env["name"])
                    assert set(re.findall(r"password=([^&]+)", url)) <= {
                        "$(OSS_SERVE_REDIS_PASSWORD)"
                    }
    text = render_text(values)
    assert "requirepass" not in text.replace("requirepass $REDIS_PASSWORD", "")


def test_a_secret_literal_cannot_be_passed_as_a_value():
    from tests.helm.render import render_error

    assert "password" in render_error("redis.internal.auth.password=hunter2")
    assert "url" in render_error("redis.external.url=redis://:pw@host:6379")
    assert "apiKey" in render_error("router.apiKey.value=sk-123") or "value" in render_error(
        "router.apiKey.value=sk-123"
    )


@pytest.mark.parametrize("values", VALUE_SETS, ids=VALUE_IDS)
def test_network_policies_isolate_redis(values):
    objects = render(values)
    policies = {p["metadata"]["name"]: p for p in of_kind(objects, "NetworkPolicy")}
    deny = policies["oss-serve-default-deny"]["spec"]
    assert deny["policyTypes"] == ["Ingress"] and "ingress" not in deny
    assert deny["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "oss-serve"
    for policy in policies.values():
        for rule in policy["spec"].get("ingress", []):
            assert rule.get("from"), f"{policy['metadata']['name']} has a rule open to all"
    mode = chart_values(values)["redis"]["mode"]
    if mode == "external":
        assert "oss-serve-redis" not in policies
        return
    redis_policy = policies["oss-serve-redis"]["spec"]
    assert redis_policy["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "redis"
    (rule,) = redis_policy["ingress"]
    ports = [{"port": "redis", "protocol": "TCP"}]
    if mode == "sentinel":  # the sentinels' port too, and the Redis pods among themselves
        ports.append({"port": "sentinel", "protocol": "TCP"})
    assert rule["ports"] == ports
    peers = rule["from"]
    components = {
        p["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        for p in peers
        if "namespaceSelector" not in p
    }
    own = {"redis"} if mode == "sentinel" else set()
    assert components == {"router", "replica", "autoscaler"} | own
    for peer in peers:
        if "namespaceSelector" in peer:  # only KEDA's operator, when KEDA is on
            assert chart_values(values)["keda"]["enabled"]
            assert peer["podSelector"]["matchLabels"] == {"app": "keda-operator"}
        else:
            assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "oss-serve"


def test_router_probes_ports_hpa_and_disruption_budget():
    objects = render(VALUE_SETS[0])
    router = next(
        d for d in of_kind(objects, "Deployment") if d["metadata"]["name"] == "oss-serve-router"
    )
    container = router["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["startupProbe"]["httpGet"]["path"] == "/health"
    service = next(
        s for s in of_kind(objects, "Service") if s["metadata"]["name"] == "oss-serve-router"
    )
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["http"]["port"] == 8000 and ports["http"]["appProtocol"] == "http"
    assert ports["grpc"]["port"] == 50051 and ports["grpc"]["appProtocol"] == "kubernetes.io/h2c"
    (hpa,) = of_kind(objects, "HorizontalPodAutoscaler")
    kinds = {m["type"] for m in hpa["spec"]["metrics"]}
    assert kinds == {"Resource", "Pods"}
    assert "replicas" not in router["spec"], "the HPA owns the router's replica count"
    (pdb,) = [
        p for p in of_kind(objects, "PodDisruptionBudget") if "router" in p["metadata"]["name"]
    ]
    assert pdb["spec"]["minAvailable"] == 1
    spread = router["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} == {
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    }


def test_redis_statefulset_keeps_an_aof_on_a_volume():
    objects = render(VALUE_SETS[0])
    (sts,) = of_kind(objects, "StatefulSet")
    assert (
        sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "20Gi"
    )
    config = next(
        c for c in of_kind(objects, "ConfigMap") if c["metadata"]["name"] == "oss-serve-redis"
    )
    assert "appendonly yes" in config["data"]["redis.conf"]
    assert "appendfsync everysec" in config["data"]["redis.conf"]


def test_external_redis_deploys_no_redis_and_reads_the_url_from_the_secret():
    values = next(p for p in VALUE_SETS if p.name == "external-redis-values.yaml")
    objects = render(values)
    assert not of_kind(objects, "StatefulSet")
    router = next(
        d for d in of_kind(objects, "Deployment") if d["metadata"]["name"] == "oss-serve-router"
    )
    env = {e["name"]: e for e in router["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["OSS_SERVE_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "oss-serve-external-redis",
        "key": "redis-url",
    }
    assert env["OSS_SERVE_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "oss-serve-api-keys"


def test_sentinel_mode_runs_a_primary_replicas_and_a_sentinel_in_each_pod():
    values = next(p for p in VALUE_SETS if p.name == "sentinel-values.yaml")
    objects = render(values)
    (sts,) = of_kind(objects, "StatefulSet")
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["serviceName"] == "oss-serve-redis-headless"
    pod = sts["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["redis", "sentinel"]
    assert pod["containers"][1]["command"] == ["sh", "/etc/redis/sentinel.sh"]
    (service,) = [s for s in of_kind(objects, "Service") if "redis" in s["metadata"]["name"]]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"]
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
        "redis": 6379,
        "sentinel": 26379,
    }
    config = next(
        c for c in of_kind(objects, "ConfigMap") if c["metadata"]["name"] == "oss-serve-redis"
    )["data"]
    assert "sentinel monitor oss-serve $PRIMARY 6379 2" in config["sentinel.sh"]
    assert "sentinel down-after-milliseconds oss-serve 5000" in config["sentinel.sh"]
    assert 'FOLLOW="replicaof $PRIMARY 6379"' in config["redis.sh"]
    sentinels = ",".join(
        f"oss-serve-redis-{i}.oss-serve-redis-headless.{NAMESPACE}.svc:26379" for i in range(3)
    )
    for where, template in pod_templates(objects):
        for c in containers(template):
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            if "OSS_SERVE_REDIS_URL" in env:
                assert env["OSS_SERVE_REDIS_URL"] == (
                    f"redis+sentinel://:$(OSS_SERVE_REDIS_PASSWORD)@{sentinels}/oss-serve/0"
                    "?sentinel_password=$(OSS_SERVE_REDIS_PASSWORD)"
                ), where
    for scaled in of_kind(objects, "ScaledObject"):
        for trigger in scaled["spec"]["triggers"]:
            assert trigger["type"] == "redis-sentinel-streams"
            assert trigger["metadata"]["addresses"] == sentinels
            assert trigger["metadata"]["sentinelMaster"] == "oss-serve"
    (auth,) = of_kind(objects, "TriggerAuthentication")
    assert {r["parameter"] for r in auth["spec"]["secretTargetRef"]} == {
        "password",
        "sentinelPassword",
    }


def test_a_sentinel_quorum_above_the_pod_count_is_refused():
    from tests.helm.render import render_error

    error = render_error("redis.mode=sentinel", "redis.sentinel.quorum=4")
    assert "redis.sentinel.quorum" in error
    assert "replicas" in render_error("redis.mode=sentinel", "redis.sentinel.replicas=2")


def test_keda_on_scales_one_deployment_per_pool_and_drops_the_autoscaler():
    values = next(p for p in VALUE_SETS if p.name == "keda-values.yaml")
    objects = render(values)
    deployments = {d["metadata"]["name"]: d for d in of_kind(objects, "Deployment")}
    assert "oss-serve-autoscaler" not in deployments
    assert not of_kind(objects, "RayCluster")
    scaled = of_kind(objects, "ScaledObject")
    assert {s["spec"]["scaleTargetRef"]["name"] for s in scaled} == {
        "oss-serve-replica-a100",
        "oss-serve-replica-rtx4090",
    }
    for obj in scaled:
        target = deployments[obj["spec"]["scaleTargetRef"]["name"]]
        assert "replicas" not in target["spec"], "KEDA owns the replica count"
        for trigger in obj["spec"]["triggers"]:
            assert trigger["type"] == "redis-streams"
            assert trigger["metadata"]["stream"].startswith("oss-serve:req:overflow:")
            assert trigger["metadata"]["consumerGroup"] == "replicas"
            assert trigger["authenticationRef"]["name"] == "oss-serve-redis"
    activation = {
        s["metadata"]["labels"]["oss-serve/pool"]: s["spec"]["triggers"][0]["metadata"][
            "activationLagCount"
        ]
        for s in scaled
    }
    assert activation == {"rtx4090": "0", "a100": "16"}  # the cheap pool takes traffic first
    (auth,) = of_kind(objects, "TriggerAuthentication")
    assert auth["spec"]["secretTargetRef"][0]["name"] == "oss-serve-redis"


def test_keda_off_runs_the_autoscaler_with_least_privilege():
    objects = render(VALUE_SETS[0])
    (role,) = of_kind(objects, "Role")
    (rule,) = role["rules"]
    assert rule == {
        "apiGroups": ["ray.io"],
        "resources": ["rayclusters"],
        "resourceNames": ["oss-serve-replicas"],
        "verbs": ["get", "patch"],
    }
    assert not of_kind(objects, "ClusterRole") and not of_kind(objects, "ClusterRoleBinding")
    accounts = {a["metadata"]["name"]: a for a in of_kind(objects, "ServiceAccount")}
    for name, account in accounts.items():
        assert account["automountServiceAccountToken"] is (name == "oss-serve-autoscaler"), name


def test_autoscaler_policy_configmap_is_what_oss_serve_autoscale_reads():
    for values in VALUE_SETS:
        objects = render(values)
        config = [
            c
            for c in of_kind(objects, "ConfigMap")
            if c["metadata"]["name"] == "oss-serve-autoscaler"
        ]
        if chart_values(values)["keda"]["enabled"]:
            assert not config
            continue
        policy = AutoscalerConfig.model_validate(yaml.safe_load(config[0]["data"]["policy.yaml"]))
        assert policy.namespace == NAMESPACE
        assert {p.name for p in policy.pools} == set(enabled_pools(chart_values(values)))
        if policy.workload == "RayCluster":
            (ray,) = of_kind(objects, "RayCluster")
            assert policy.ray_cluster == ray["metadata"]["name"]
            groups = {g["groupName"] for g in ray["spec"]["workerGroupSpecs"]}
            assert groups == {p.name for p in policy.pools}


def test_raycluster_has_one_worker_group_per_pool_with_its_bounds():
    values = next(p for p in VALUE_SETS if p.name == "three-pools-values.yaml")
    (ray,) = of_kind(render(values), "RayCluster")
    groups = {g["groupName"]: g for g in ray["spec"]["workerGroupSpecs"]}
    assert set(groups) == {"a100", "h100", "rtx4090"}
    assert (groups["rtx4090"]["minReplicas"], groups["rtx4090"]["maxReplicas"]) == (0, 12)
    assert groups["rtx4090"]["rayStartParams"]["num-gpus"] == "2"
    assert ray["spec"]["enableInTreeAutoscaling"] is False
    h100 = groups["h100"]["template"]["spec"]
    assert {
        "key": "cloud.example.com/reserved",
        "operator": "Equal",
        "value": "inference",
        "effect": "NoSchedule",
    } in h100["tolerations"]


def test_weights_from_an_init_container_fill_a_shared_volume():
    values = next(p for p in VALUE_SETS if p.name == "full-features-values.yaml")
    for where, template in pod_templates(render(values)):
        if "oss-serve/pool" not in template["metadata"]["labels"]:
            continue
        (init,) = template["spec"]["initContainers"]
        assert init["volumeMounts"] == [{"name": "models", "mountPath": "/models"}], where
        models = next(v for v in template["spec"]["volumes"] if v["name"] == "models")
        assert models["emptyDir"]["sizeLimit"] == "80Gi", where


def test_grafana_dashboard_uses_vllm_and_router_metric_names():
    objects = render(VALUE_SETS[0])
    dashboard = next(
        c for c in of_kind(objects, "ConfigMap") if c["metadata"]["name"] == "oss-serve-dashboard"
    )
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    text = dashboard["data"]["oss-serve.json"]
    for metric in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:time_to_first_token_seconds",
        "vllm:inter_token_latency_seconds",
        "vllm:e2e_request_latency_seconds",
        "vllm:prefix_cache_hits_total",
        "vllm:prefix_cache_queries_total",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "oss_serve:requests_in_flight",
    ):
        assert metric in text, metric


def test_service_monitor_scrapes_the_router_metrics():
    values = next(p for p in VALUE_SETS if p.name == "full-features-values.yaml")
    objects = render(values)
    monitors = {m["metadata"]["name"]: m for m in of_kind(objects, "ServiceMonitor")}
    router = monitors["oss-serve-router"]
    assert router["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "15s"}]
    assert router["metadata"]["labels"]["release"] == "prometheus"
    autoscaler = monitors["oss-serve-autoscaler"]
    assert autoscaler["spec"]["endpoints"][0]["port"] == "metrics"
    service = next(
        s for s in of_kind(objects, "Service") if s["metadata"]["name"] == "oss-serve-autoscaler"
    )
    assert service["spec"]["selector"] == autoscaler["spec"]["selector"]["matchLabels"]


def test_lora_values_become_the_replicas_vllm_flags_and_the_routers_admin_key():
    """Should set OSS_SERVE_ENABLE_LORA, LORA_MODULES, MAX_LORAS, MAX_LORA_RANK and
    MAX_CPU_LORAS on every replica when `model.lora.enabled` is set, and the routers' admin
    key from `model.lora.adminKey.existingSecret`."""
    import json

    from oss_serve.common.adapters import parse_lora_modules

    values = CHART / "ci" / "full-features-values.yaml"
    objects = render(values)
    replica_envs = []
    for where, template in pod_templates(objects):
        for c in containers(template):
            env = {e["name"]: e for e in c.get("env", [])}
            if c["name"] == "replica":
                replica_envs.append(env)
            if c["name"] == "router":
                secret = env["OSS_SERVE_ADMIN_API_KEY"]["valueFrom"]["secretKeyRef"]
                assert secret == {"name": "oss-serve-admin", "key": "admin-api-key"}, where
    assert replica_envs
    for env in replica_envs:
        assert env["OSS_SERVE_ENABLE_LORA"]["value"] == "true"
        modules = json.loads(env["OSS_SERVE_LORA_MODULES"]["value"])
        assert parse_lora_modules(modules) == {
            "sql": "/models/lora/sql",
            "support-bot": "/models/lora/support-bot",
        }
        assert (env["OSS_SERVE_MAX_LORAS"]["value"], env["OSS_SERVE_MAX_LORA_RANK"]["value"]) == (
            "8",
            "32",
        )
        assert env["OSS_SERVE_MAX_CPU_LORAS"]["value"] == "16"


def test_lora_off_by_default_sets_no_lora_env():
    """Should leave LoRA off (no OSS_SERVE_*LORA* env, no admin key) with the default values."""
    for _, template in pod_templates(render(CHART / "ci" / "default-values.yaml")):
        for c in containers(template):
            names = {e["name"] for e in c.get("env", [])}
            assert not {n for n in names if "LORA" in n or n == "OSS_SERVE_ADMIN_API_KEY"}
