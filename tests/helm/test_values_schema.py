"""values.schema.json and the chart's own checks reject bad values, naming the field."""

from __future__ import annotations

import pytest

from tests.helm.render import render, render_error, requires_helm

pytestmark = [pytest.mark.unit, requires_helm]

BAD_VALUES = [
    ("pools.a100.tensorParallelSize=9", "tensorParallelSize"),
    ("pools.a100.tensorParallelSize=0", "tensorParallelSize"),
    ("pools.a100.gpuMemoryUtilization=1.5", "gpuMemoryUtilization"),
    ("pools.a100.maxModelLen=200000", "maxModelLen"),
    ("pools.A100_big.gpuProduct=x", "A100_big"),
    ("pools.a100.minReplicas=5", "minReplicas"),
    ("pools.a100.replicas=9", "replicas"),
    ("pools.a100.resources.limits=null", "limits"),
    ("redis.mode=cluster", "mode"),
    ("redis.mode=external", "existingSecret"),
    ("redis.internal.auth.existingSecret=", "existingSecret"),
    ("replicas.workload=StatefulSet", "workload"),
    ("keda.enabled=true", "workload"),
    ("podSecurityContext.runAsNonRoot=false", "runAsNonRoot"),
    ("image.router.pullPolicy=Sometimes", "pullPolicy"),
    ("image.replica.digest=md5:abc", "digest"),
    ("router.autoscaling.targetCPUUtilizationPercentage=150", "targetCPUUtilizationPercentage"),
    ("autoscaler.targetUtilization=0", "targetUtilization"),
    ("settings.logLevel=verbose", "logLevel"),
    ("networkPolicy.ingressFrom=null", "ingressFrom"),
    ("routerr.replicas=3", "routerr"),
]


@pytest.mark.parametrize(("flag", "field"), BAD_VALUES, ids=[f for f, _ in BAD_VALUES])
def test_bad_value_is_rejected_naming_the_field(flag, field):
    assert field in render_error(flag)


def test_disabling_a_pool_removes_it_and_an_empty_pool_set_is_refused(tmp_path):
    h100_only = tmp_path / "h100-only.yaml"
    h100_only.write_text(
        """
pools:
  a100: {enabled: false}
  h100:
    gpuProduct: NVIDIA-H100-80GB-HBM3
    replicas: 1
    minReplicas: 1
    maxReplicas: 2
    tensorParallelSize: 2
    expertParallelSize: 1
    maxModelLen: 8192
    gpuMemoryUtilization: 0.9
    costPerReplicaHour: 2
    baseTtftSeconds: 0.2
    shmSize: 8Gi
    resources:
      requests: {cpu: "1", memory: 1Gi}
      limits: {cpu: "2", memory: 2Gi}
"""
    )
    (ray,) = [o for o in render(h100_only) if o["kind"] == "RayCluster"]
    assert [g["groupName"] for g in ray["spec"]["workerGroupSpecs"]] == ["h100"]
    assert "at least one GPU pool" in render_error("pools.a100.enabled=false")
