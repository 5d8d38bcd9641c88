"""oss-serve: a distributed multi-GPU serving cluster for gpt-oss-20b and gpt-oss-120b.

The public Python API is re-exported here lazily, so that `import oss_serve` stays cheap
(no torch import) for the router and the CLI.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY_EXPORTS: dict[str, str] = {
    "LLM": "oss_serve.llm",
    "SamplingParams": "oss_serve.workers.engine.sampling_params",
    "RequestOutput": "oss_serve.workers.engine.outputs",
    "CompletionOutput": "oss_serve.workers.engine.outputs",
    "Logprob": "oss_serve.workers.engine.outputs",
    "AsyncEngine": "oss_serve.workers.engine.async_engine",
    "EngineConfig": "oss_serve.workers.engine.engine_config",
    "LoRARequest": "oss_serve.workers.lora.request",
}

__all__ = ["__version__", *_LAZY_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _LAZY_EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'oss_serve' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
