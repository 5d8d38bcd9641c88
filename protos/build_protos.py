"""Compile protos/*.proto into importable `oss_serve.protos.*_pb2` modules.

protoc writes imports from the proto include path, so the sources are staged under
`oss_serve/protos/` in a temporary include root; generated code then imports
`from oss_serve.protos import x_pb2` and resolves inside the package.
Run by setup.py (wheel and editable installs) and by `make protos`.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path


def compile_protos(proto_dir: Path) -> list[Path]:
    """Compile every .proto in proto_dir, writing *_pb2.py, *_pb2_grpc.py and .pyi beside it."""
    from grpc_tools import protoc  # build-time dependency (pyproject build-system.requires)

    sources = sorted(proto_dir.glob("*.proto"))
    if not sources:
        return []
    with tempfile.TemporaryDirectory() as tmp:
        include_root = Path(tmp) / "include"
        staged = include_root / "oss_serve" / "protos"
        staged.mkdir(parents=True)
        out_root = Path(tmp) / "out"
        out_root.mkdir()
        for src in sources:
            shutil.copy(src, staged / src.name)
        well_known = Path(protoc.__file__).parent / "_proto"
        args = [
            "grpc_tools.protoc",
            f"-I{include_root}",
            f"-I{well_known}",
            f"--python_out={out_root}",
            f"--pyi_out={out_root}",
            f"--grpc_python_out={out_root}",
            *(f"oss_serve/protos/{src.name}" for src in sources),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {[s.name for s in sources]}")
        written = []
        for generated in (out_root / "oss_serve" / "protos").iterdir():
            target = proto_dir / generated.name
            shutil.copy(generated, target)
            written.append(target)
    return written


if __name__ == "__main__":
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent
    for path in compile_protos(folder):
        print(f"generated {path}")
