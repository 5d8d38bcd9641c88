"""Render the chart with the real helm binary (installed by `make helm-check`)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "oss-serve"
VALUE_SETS = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE, NAMESPACE = "oss-serve", "serving"


def helm_binary() -> str | None:
    """OSS_SERVE_HELM, the copy `make helm-check` installs, or helm on PATH."""
    for candidate in (os.environ.get("OSS_SERVE_HELM"), ROOT / ".cache/chart-tools/bin/helm"):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    return shutil.which("helm")


requires_helm = pytest.mark.skipif(
    helm_binary() is None,
    reason="helm is not installed: `make helm-check` installs it into .cache/chart-tools",
)


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    helm = helm_binary()
    assert helm is not None
    return subprocess.run([helm, *args], capture_output=True, text=True, check=False)


def template_args(values: tuple[str, ...], sets: tuple[str, ...]) -> list[str]:
    args = ["template", RELEASE, str(CHART), "-n", NAMESPACE]
    for path in values:
        args += ["-f", path]
    for item in sets:
        args += ["--set", item]
    return args


@cache
def _render(values: tuple[str, ...], sets: tuple[str, ...]) -> tuple[str, list[dict[str, Any]]]:
    result = run_helm(*template_args(values, sets))
    if result.returncode != 0:
        raise AssertionError(f"helm template failed:\n{result.stderr}")
    return result.stdout, [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def render(*values: Path | str, sets: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    return _render(tuple(str(v) for v in values), sets)[1]


def render_text(*values: Path | str, sets: tuple[str, ...] = ()) -> str:
    return _render(tuple(str(v) for v in values), sets)[0]


def render_error(*sets: str, values: tuple[Path, ...] = ()) -> str:
    """stderr of a render that must fail."""
    result = run_helm(*template_args(tuple(str(v) for v in values), sets))
    assert result.returncode != 0, f"helm accepted {sets}"
    return result.stderr


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def pod_templates(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod template) of every workload, RayCluster head and worker groups included."""
    for obj in objects:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield name, obj["spec"]["template"]
        elif obj["kind"] == "RayCluster":
            yield f"{name}/head", obj["spec"]["headGroupSpec"]["template"]
            for group in obj["spec"].get("workerGroupSpecs", []):
                yield f"{name}/{group['groupName']}", group["template"]
