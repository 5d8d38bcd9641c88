"""oss-serve: a distributed multi-GPU serving cluster for gpt-oss-20b and gpt-oss-120b.

The public Python API is re-exported here lazily, so that `import oss_serve` stays cheap
(no torch import) for the router and the CLI.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it; the engine issue adds LLM and SamplingParams here.
_LAZY_EXPORTS: dict[str, str] = {}

__all__ = ["__version__", *_LAZY_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _LAZY_EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'oss_serve' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
