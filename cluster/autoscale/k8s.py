"""Read and set replica counts per pool in Kubernetes, with the official `kubernetes` client.

Two workloads, as the chart deploys them: a KubeRay RayCluster with one worker group per
pool (patched with a JSON patch that tests the group's name at its index, so a reordered
list fails instead of scaling the wrong pool), or one Deployment per pool (its scale
subresource). The autoscaler's RBAC role grants exactly these calls.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from kubernetes import client as k8s

RAY_GROUP, RAY_VERSION, RAY_PLURAL = "ray.io", "v1", "rayclusters"


class ScaleError(RuntimeError):
    """The workload does not have the pools the policy names."""


class ReplicaScaler(Protocol):
    def current(self) -> dict[str, int]:
        """Replicas Kubernetes is asked to run, per pool."""
        ...

    def apply(self, desired: Mapping[str, int]) -> None:
        """Set the replicas of the given pools."""
        ...


class RayClusterScaler:
    """Worker group replicas of one RayCluster (group name = pool name)."""

    def __init__(self, api: k8s.CustomObjectsApi, namespace: str, name: str) -> None:
        self.api, self.namespace, self.name = api, namespace, name

    def _cluster(self) -> dict[str, Any]:
        obj = self.api.get_namespaced_custom_object(
            RAY_GROUP, RAY_VERSION, self.namespace, RAY_PLURAL, self.name
        )
        if not isinstance(obj, dict):
            raise ScaleError(f"RayCluster {self.name}: unexpected response {type(obj).__name__}")
        return obj

    def current(self) -> dict[str, int]:
        groups = self._cluster()["spec"].get("workerGroupSpecs", [])
        return {g["groupName"]: int(g.get("replicas", 0)) for g in groups}

    def apply(self, desired: Mapping[str, int]) -> None:
        if not desired:
            return
        groups = self._cluster()["spec"].get("workerGroupSpecs", [])
        index = {g["groupName"]: i for i, g in enumerate(groups)}
        missing = sorted(set(desired) - set(index))
        if missing:
            raise ScaleError(f"RayCluster {self.name} has no worker group for pools {missing}")
        patch: list[dict[str, Any]] = []
        for pool, replicas in sorted(desired.items()):
            path = f"/spec/workerGroupSpecs/{index[pool]}"
            patch.append({"op": "test", "path": f"{path}/groupName", "value": pool})
            patch.append({"op": "replace", "path": f"{path}/replicas", "value": int(replicas)})
        # The client defaults to a merge patch; a list of operations is a JSON patch.
        self.api.patch_namespaced_custom_object(
            RAY_GROUP,
            RAY_VERSION,
            self.namespace,
            RAY_PLURAL,
            self.name,
            patch,
            _content_type="application/json-patch+json",
        )


class DeploymentScaler:
    """The scale subresource of one Deployment per pool."""

    def __init__(self, api: k8s.AppsV1Api, namespace: str, deployments: Mapping[str, str]) -> None:
        self.api, self.namespace, self.deployments = api, namespace, dict(deployments)

    def current(self) -> dict[str, int]:
        replicas = {}
        for pool, name in self.deployments.items():
            scale = self.api.read_namespaced_deployment_scale(name, self.namespace)
            replicas[pool] = int(scale.spec.replicas or 0) if scale.spec else 0
        return replicas

    def apply(self, desired: Mapping[str, int]) -> None:
        missing = sorted(set(desired) - set(self.deployments))
        if missing:
            raise ScaleError(f"no Deployment configured for pools {missing}")
        for pool, replicas in sorted(desired.items()):
            body = {"spec": {"replicas": int(replicas)}}
            self.api.patch_namespaced_deployment_scale(self.deployments[pool], self.namespace, body)


class DryRunScaler:
    """No cluster: starts the pools at the given counts and remembers what was 'applied'."""

    def __init__(self, initial: Mapping[str, int]) -> None:
        self.replicas = dict(initial)

    def current(self) -> dict[str, int]:
        return dict(self.replicas)

    def apply(self, desired: Mapping[str, int]) -> None:
        self.replicas.update(desired)


def load_kube_config() -> k8s.ApiClient:
    """In a pod: its service account; elsewhere: the user's kubeconfig."""
    from kubernetes import config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return k8s.ApiClient()
