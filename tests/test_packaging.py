"""The wheel installs only the `oss_serve` namespace, and every subpackage imports from it."""

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
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

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--quiet",
            "-w",
            str(out),
            str(REPO_ROOT),
        ],
        check=True,
    )
    (built,) = out.glob("oss_serve-*.whl")
    return built


def test_wheel_holds_only_the_oss_serve_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_levels = {name.split("/")[0] for name in names}
    assert {t for t in top_levels if not t.endswith(".dist-info")} == {"oss_serve"}
    for sub in SUBPACKAGES:
        assert f"oss_serve/{sub}/__init__.py" in names
    assert "oss_serve/protos/inference_pb2.py" in names, "protos must be compiled into the wheel"
    demo_docs = sorted((REPO_ROOT / "tools" / "demo_docs").glob("*.md"))
    assert demo_docs  # the folder the demo's browser searches ships in the wheel
    for doc in demo_docs:
        assert f"oss_serve/tools/demo_docs/{doc.name}" in names


def test_every_subpackage_imports_from_the_wheel_in_a_clean_venv(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", str(wheel)], check=True)
    # Dependencies come from this test's environment, read as a plain path (its .pth import
    # hooks, such as the editable install's finder, do not run), so oss_serve is the wheel's.
    deps = [p for p in sys.path if p.endswith("site-packages")]
    site = subprocess.check_output(
        [python, "-c", "import site; print(site.getsitepackages()[0])"], text=True
    )
    Path(site.strip(), "zz_test_deps.pth").write_text("\n".join(deps) + "\n")
    modules = ", ".join(
        ["oss_serve", *(f"oss_serve.{s}" for s in SUBPACKAGES), "oss_serve.protos.inference_pb2"]
    )
    code = f"import {modules}; import oss_serve; print(oss_serve.__file__)"
    out = subprocess.check_output([python, "-c", code], text=True, cwd=tmp_path)
    assert str(env_dir) in out
    shown = subprocess.check_output([python, "-m", "pip", "show", "-f", "oss-serve"], text=True)
    files = [line.strip() for line in shown.split("Files:")[1].splitlines() if line.strip()]
    assert not [
        f
        for f in files
        if f.split("/")[0] in {"kernels", "router", "workers", "common", "harmony", "streams"}
    ]
