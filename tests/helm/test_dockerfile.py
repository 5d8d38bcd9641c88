"""The Dockerfile's rules (images are not built in CI): stages, bases, user, health checks.

`make helm-check` also runs checkov's Dockerfile checks on it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
BUILD_TOOLS = re.compile(r"\b(build-essential|gcc|g\+\+|make|cmake|clang|python3-dev|git)\b")


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse(path: Path) -> list[Stage]:
    """Instructions per stage, with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    stages: list[Stage] = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", args.strip(), re.IGNORECASE)
            assert match, f"every stage is named: {line}"
            stages.append(Stage(match.group(1), match.group(2)))
        else:
            assert stages, f"instruction before FROM: {line}"
            stages[-1].instructions.append((keyword.upper(), args.strip()))
    return stages


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    return {s.name: s for s in parse(ROOT / "Dockerfile")}


def test_multi_stage_with_router_and_replica_targets(stages):
    assert {"wheel", "router", "replica"} <= set(stages)
    assert len(stages) >= 4


def test_router_is_slim_python_and_replica_is_the_cuda_runtime(stages):
    assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", stages["router"].base)
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-(cudnn-)?runtime-ubuntu[\d.]+", stages["replica"].base)
    for stage in stages.values():
        assert ":" in stage.base and not stage.base.endswith(":latest"), stage.name


@pytest.mark.parametrize("target", ["router", "replica"])
def test_final_images_run_as_a_non_root_user(stages, target):
    users = stages[target].all("USER")
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert int(users[-1].split(":")[0]) >= 10000  # matches the chart's runAsUser


@pytest.mark.parametrize("target", ["router", "replica"])
def test_final_images_have_a_healthcheck_and_the_cli_entrypoint(stages, target):
    (healthcheck,) = stages[target].all("HEALTHCHECK")
    assert "CMD" in healthcheck
    assert stages[target].all("ENTRYPOINT") == ['["oss-serve"]']


@pytest.mark.parametrize("target", ["router", "replica"])
def test_final_images_install_no_build_tools(stages, target):
    for command in stages[target].all("RUN"):
        assert not BUILD_TOOLS.search(command), command
        assert "pip install" not in command, "final images copy a finished venv"
    copied = " ".join(stages[target].all("COPY"))
    assert "--from=" in copied


def test_the_dockerignore_keeps_local_state_out_of_the_build_context():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv*", ".cache", "tests"} <= ignored
