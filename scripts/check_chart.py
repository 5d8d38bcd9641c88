"""`make helm-check`: lint the chart, render every ci/*-values.yaml, validate what renders.

Runs under the tools venv (.venv-tools: kubernetes-validate, jsonschema, checkov), installed
by scripts/install-chart-tools.sh. Steps, each failing the check on any finding:
  1. `helm lint --strict` with the defaults and with every value set;
  2. `helm template` for every value set;
  3. core objects against Kubernetes' own schemas (strict: unknown fields are errors);
     RayCluster, ScaledObject, TriggerAuthentication and ServiceMonitor against the schemas
     in helm/crd-schemas (strict, with pod templates checked as Kubernetes PodTemplateSpecs),
     and KEDA's objects also with the CRD-derived @kubernetes-models/keda validators;
  4. checkov on all rendered objects and on the Dockerfile: no failed check (each skip
     carries its reason in the chart's annotations or the Dockerfile's comments);
  5. hadolint on the Dockerfile (.hadolint.yaml gives the reason for each ignored rule).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parent.parent
RELEASE = "oss-serve"
NAMESPACE = "oss-serve"
CRD_SCHEMA_FILES = {
    ("ray.io/v1", "RayCluster"): "ray.io_v1_raycluster.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_v1alpha1_scaledobject.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda.sh_v1alpha1_triggerauthentication.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_v1_servicemonitor.json",
}
K8S_DEFINITIONS = "kubernetes-json-schema/v{version}-local-strict/_definitions.json"


class CheckFailed(Exception):
    """A step found problems; the message lists them."""


@contextmanager
def step(title: str) -> Iterator[None]:
    started = time.monotonic()
    print(f"helm-check: {title} ...", flush=True)
    yield
    print(f"helm-check: {title}: ok ({time.monotonic() - started:.1f} s)", flush=True)


def run(command: list[str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise CheckFailed(f"{' '.join(command)}\n{result.stdout}{result.stderr}")
    return result.stdout


def value_sets(chart: Path) -> list[Path]:
    found = sorted((chart / "ci").glob("*-values.yaml"))
    if not found:
        raise CheckFailed(f"no value sets in {chart / 'ci'}")
    return found


def lint(helm: str, chart: Path) -> None:
    run([helm, "lint", "--strict", str(chart)])
    for values in value_sets(chart):
        run([helm, "lint", "--strict", str(chart), "-f", str(values)])


def render(helm: str, chart: Path, values: Path) -> list[dict[str, Any]]:
    out = run([helm, "template", RELEASE, str(chart), "-n", NAMESPACE, "-f", str(values)])
    return [doc for doc in yaml.safe_load_all(out) if doc]


def name_of(obj: dict[str, Any]) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


class CrdValidators:
    """JSON-schema validators for the custom resources the chart renders."""

    def __init__(self, schema_dir: Path, kube_version: str) -> None:
        defs_path = Path(kubernetes_validate.__file__).parent / K8S_DEFINITIONS.format(
            version=kube_version
        )
        definitions = Resource.from_contents(json.loads(defs_path.read_text()))
        registry: Registry = definitions @ Registry()
        self.validators = {
            key: jsonschema.Draft202012Validator(
                json.loads((schema_dir / filename).read_text()), registry=registry
            )
            for key, filename in CRD_SCHEMA_FILES.items()
        }

    def errors(self, obj: dict[str, Any]) -> list[str] | None:
        """Errors of a custom resource, or None when obj is not one of ours."""
        validator = self.validators.get((obj.get("apiVersion"), obj.get("kind")))
        if validator is None:
            return None
        return [
            f"{'/'.join(str(p) for p in err.absolute_path) or '.'}: {err.message}"
            for err in validator.iter_errors(obj)
        ]


def validate_objects(
    objects: list[dict[str, Any]], crds: CrdValidators, kube_version: str
) -> list[str]:
    problems = []
    for obj in objects:
        crd_errors = crds.errors(obj)
        if crd_errors is not None:
            problems += [f"{name_of(obj)}: {e}" for e in crd_errors]
            continue
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{name_of(obj)}: no schema for {obj.get('apiVersion')}")
        except kubernetes_validate.ValidationError as err:
            path = "/".join(str(p) for p in err.absolute_path) or "."
            problems.append(f"{name_of(obj)}: {path}: {err.message}")
    return problems


def validate_keda_models(objects: list[dict[str, Any]], node_modules: Path) -> None:
    keda = [o for o in objects if o.get("apiVersion", "").startswith("keda.sh/")]
    if not keda:
        return
    node = shutil.which("node")
    if node is None:
        raise CheckFailed("node is not installed (needed for the KEDA model validators)")
    result = subprocess.run(
        [node, str(ROOT / "scripts" / "validate-keda.cjs")],
        input=json.dumps(keda),
        capture_output=True,
        text=True,
        env={"NODE_PATH": str(node_modules), "PATH": str(Path(node).parent)},
        check=False,
    )
    if result.returncode != 0:
        raise CheckFailed(f"KEDA model validation:\n{result.stdout}{result.stderr}")


def run_checkov(target: list[str], framework: str) -> str:
    """checkov on `target` (e.g. ["-d", dir]); returns a summary of the justified skips."""
    checkov = str(Path(sys.executable).parent / "checkov")
    command = [checkov, *target, "--framework", framework]
    command += ["--compact", "--skip-download", "-o", "json"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    reports = json.loads(result.stdout or "[]")
    reports = reports if isinstance(reports, list) else [reports]
    failed: list[str] = []
    skipped: dict[str, int] = {}
    for report in reports:
        results = report.get("results", {})
        for check in results.get("failed_checks", []):
            failed.append(
                f"{check['check_id']} {check['check_name']}: {check['resource']}"
                f" ({Path(check['file_path']).name})"
            )
        for check in results.get("skipped_checks", []):
            skipped[check["check_id"]] = skipped.get(check["check_id"], 0) + 1
    if result.returncode not in (0, 1) or (result.returncode == 1 and not failed):
        raise CheckFailed(f"checkov did not run:\n{result.stderr[-2000:]}")
    if failed:
        raise CheckFailed("checkov findings:\n  " + "\n  ".join(sorted(set(failed))))
    return ", ".join(f"{check_id} x{count}" for check_id, count in sorted(skipped.items()))


def run_hadolint(dockerfile: Path) -> None:
    hadolint = str(Path(sys.executable).parent / "hadolint")
    config = ROOT / ".hadolint.yaml"
    run([hadolint, "--config", str(config), "--no-color", str(dockerfile)])


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chart", type=Path, default=ROOT / "helm" / "oss-serve")
    parser.add_argument("--helm", default=str(ROOT / ".cache" / "chart-tools" / "bin" / "helm"))
    parser.add_argument("--crd-schemas", type=Path, default=ROOT / "helm" / "crd-schemas")
    parser.add_argument(
        "--node-modules",
        type=Path,
        default=ROOT / ".cache" / "chart-tools" / "npm" / "node_modules",
    )
    parser.add_argument("--kube-version", default="1.30.0")
    parser.add_argument("--dockerfile", type=Path, default=ROOT / "Dockerfile")
    parser.add_argument("--no-checkov", action="store_true", help="skip the checkov step")
    return parser.parse_args(argv)


def check(args: argparse.Namespace) -> None:
    with step("helm lint --strict"):
        lint(args.helm, args.chart)
    crds = CrdValidators(args.crd_schemas, args.kube_version)
    with tempfile.TemporaryDirectory(prefix="oss-serve-rendered-") as tmp:
        for values in value_sets(args.chart):
            with step(f"render + validate {values.name}"):
                objects = render(args.helm, args.chart, values)
                problems = validate_objects(objects, crds, args.kube_version)
                if problems:
                    raise CheckFailed("invalid objects:\n  " + "\n  ".join(problems))
                validate_keda_models(objects, args.node_modules)
                rendered = Path(tmp) / values.name
                rendered.write_text(yaml.safe_dump_all(objects, sort_keys=False))
        if not args.no_checkov:
            with step("checkov: rendered objects"):
                skips = run_checkov(["-d", tmp], "kubernetes")
            print(f"helm-check: checkov skips (reasons: checkov.io/skip annotations): {skips}")
            with step("checkov: Dockerfile"):
                skips = run_checkov(["-f", str(args.dockerfile)], "dockerfile")
            print(f"helm-check: checkov skips (reasons: checkov:skip comments): {skips}")
    with step("hadolint: Dockerfile"):
        run_hadolint(args.dockerfile)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        check(args)
    except CheckFailed as err:
        print(f"helm-check: FAILED: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
