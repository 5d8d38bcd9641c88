"""Build glue: map the top-level folders into the `oss_serve` namespace and compile protos.

The repository keeps `workers/`, `kernels/`, `router/`, ... at the top level (see DESIGN.md),
and `oss_serve/<folder>` is a committed link to each, so editors, mypy and the import
linter read `oss_serve.router` as `router/`. The wheel installs them only as
`oss_serve.workers`, `oss_serve.kernels`, ... so that no generic top-level module such as
`kernels` or `router` lands in site-packages.
"""

from __future__ import annotations

import sys
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent.resolve()
SUBPACKAGES = [
    "common",
    "harmony",
    "streams",
    "workers",
    "kernels",
    "cluster",
    "router",
    "tools",
    "protos",
    "benchmarks",
]

sys.path.insert(0, str(ROOT / "protos"))
from build_protos import compile_protos  # noqa: E402

sys.path.pop(0)


def _package_map() -> tuple[list[str], dict[str, str]]:
    own = find_packages("oss_serve", exclude=[*SUBPACKAGES, *(f"{s}.*" for s in SUBPACKAGES)])
    packages = ["oss_serve", *(f"oss_serve.{p}" for p in own)]
    package_dir = {"oss_serve": "oss_serve"}
    for folder in SUBPACKAGES:
        package_dir[f"oss_serve.{folder}"] = folder
        packages.append(f"oss_serve.{folder}")
        packages += [f"oss_serve.{folder}.{sub}" for sub in find_packages(folder)]
    return packages, package_dir


class BuildPyWithProtos(build_py):
    """Generate the protobuf/gRPC modules into protos/ before copying sources."""

    def run(self) -> None:
        compile_protos(ROOT / "protos")
        super().run()


packages, package_dir = _package_map()
setup(packages=packages, package_dir=package_dir, cmdclass={"build_py": BuildPyWithProtos})
