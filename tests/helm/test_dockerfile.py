"""The Dockerfile's rules (images are not built in CI): stages, bases, user, health checks.

`make helm-check` also runs checkov's Dockerfile checks and hadolint on it; hadolint runs
here too when `make helm-check` has installed it.
"""

from __future__ import annotations

import re
import subprocess
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


# what Triton needs to build its kernel launchers at run time: a C compiler, libc headers,
# the Python headers (OSS_SERVE_KERNEL_BACKEND=torch runs without them)
TRITON_LAUNCHER_TOOLS = {"gcc", "libc6-dev", "python3-dev"}


def apt_packages(stage: Stage) -> set[str]:
    """Packages named after `apt-get install` in the stage's RUN instructions."""
    names: set[str] = set()
    for command in stage.all("RUN"):
        for part in command.split("&&"):
            words = part.split()
            if words[:2] == ["apt-get", "install"]:
                names |= {w for w in words[2:] if not w.startswith("-")}
    return names


@pytest.mark.parametrize("target", ["router", "replica"])
def test_final_images_install_no_build_tools_beyond_tritons_launcher_compiler(stages, target):
    allowed = TRITON_LAUNCHER_TOOLS if target == "replica" else set()
    for command in stages[target].all("RUN"):
        found = set(BUILD_TOOLS.findall(command))
        assert found <= allowed, (target, found - allowed)
        assert "pip install" not in command, "final images copy a finished venv"
    copied = " ".join(stages[target].all("COPY"))
    assert "--from=" in copied


def test_the_replica_image_can_compile_triton_launchers(stages):
    replica = stages["replica"]
    assert TRITON_LAUNCHER_TOOLS | {"python3"} <= apt_packages(replica)
    # the headers must be those of the interpreter the venv runs on: both from the same base
    assert replica.base == stages["replica-venv"].base
    env = " ".join(replica.all("ENV"))
    assert "OSS_SERVE_KERNEL_BACKEND" not in env, "the image runs the Triton kernels"
    assert "HOME=/tmp" in env, "Triton caches its launchers under $HOME (the chart's /tmp volume)"


def test_the_torch_kernel_fallback_is_documented():
    readme = (ROOT / "README.md").read_text()
    assert "OSS_SERVE_KERNEL_BACKEND=torch" in readme
    assert "OSS_SERVE_KERNEL_BACKEND=torch" in (ROOT / "Dockerfile").read_text()


def test_the_dockerignore_keeps_local_state_out_of_the_build_context():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv*", ".cache", "tests"} <= ignored


HADOLINT = ROOT / ".venv-tools" / "bin" / "hadolint"


@pytest.mark.skipif(not HADOLINT.is_file(), reason="`make helm-check` installs hadolint")
def test_hadolint_finds_nothing_beyond_the_justified_ignores():
    result = subprocess.run(
        [str(HADOLINT), "--config", str(ROOT / ".hadolint.yaml"), "--no-color", "Dockerfile"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_wheel_stage_copies_every_folder_setup_py_maps(stages):
    setup_source = (ROOT / "setup.py").read_text()
    listed = re.search(r"SUBPACKAGES = \[(.*?)\]", setup_source, re.DOTALL)
    assert listed
    folders = re.findall(r'"(\w+)"', listed.group(1))
    copied = {args.split()[0].rstrip("/") for args in stages["wheel"].all("COPY")}
    assert set(folders) <= copied


def test_the_router_image_has_bubblewrap_for_the_python_tool(stages):
    installs = " ".join(stages["router"].all("RUN"))
    assert re.search(r"apt-get install .*\bbubblewrap\b", installs)
