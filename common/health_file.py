"""Liveness by file age: a loop touches a file each round; the probe checks it is recent.

`python -m oss_serve.common.health_file PATH --max-age-s N` exits 0 when PATH was touched
within N seconds, 1 otherwise (what the autoscaler's liveness probe runs).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def age_s(path: Path) -> float | None:
    """Seconds since `path` was touched, or None when it does not exist."""
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--max-age-s", type=float, required=True)
    args = parser.parse_args(argv)
    age = age_s(args.path)
    if age is None:
        print(f"{args.path}: not written yet", file=sys.stderr)
        return 1
    if age > args.max_age_s:
        print(f"{args.path}: last round {age:.0f}s ago (> {args.max_age_s:.0f}s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
