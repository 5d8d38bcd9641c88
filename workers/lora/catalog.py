"""The adapters an engine serves, by name: checked in full when added, so a corrupt or
oversized adapter is refused with its reason and the engine keeps serving the rest.

`--lora-modules` fill it at start-up; `add`/`remove` change it at run time (vLLM's
load_lora_adapter / unload_lora_adapter). Each adapter gets a new positive id, so cached
weights are never reused across loads. KV blocks are keyed by the adapter's name (the
router hashes them alike), so a name stays bound to its first folder for the engine's life:
loading it again from another folder is refused (blocks cached for the old weights would
otherwise be hit).
"""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

from oss_serve.workers.lora.peft_format import AdapterError, read_adapter
from oss_serve.workers.lora.request import LoRARequest
from oss_serve.workers.model.config import ModelConfig


class AdapterCatalog:
    def __init__(self, config: ModelConfig, *, max_lora_rank: int) -> None:
        self.config = config
        self.max_lora_rank = max_lora_rank
        self._by_name: dict[str, LoRARequest] = {}
        self._folder_of: dict[str, str] = {}  # every name ever served -> its folder
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def add(self, name: str, path: str | Path) -> LoRARequest:
        """Check the adapter at `path` against the model and serve it as `name`.

        Adding a name again with the same folder returns the adapter already there;
        with another folder it is refused (remove it first). Raises AdapterError.
        """
        folder = str(Path(path).expanduser())
        with self._lock:
            known = self._by_name.get(name)
        if known is not None:
            if known.lora_path == folder:
                return known
            raise AdapterError(
                f"adapter {name!r} is already loaded from {known.lora_path}; unload it first"
            )
        bound = self._folder_of.get(name)
        if bound is not None and bound != folder:
            raise AdapterError(
                f"adapter name {name!r} was served from {bound} on this replica; its cached KV "
                "is keyed by the name: load the new folder under a new name"
            )
        read_adapter(folder, self.config, max_rank=self.max_lora_rank)
        with self._lock:
            self._folder_of[name] = folder
            request = self._by_name.setdefault(name, LoRARequest(name, next(self._ids), folder))
        return request

    def register(self, request: LoRARequest) -> LoRARequest:
        """Serve a caller's LoRARequest (the offline API): checked like `add`; the engine's
        own id is used for it, so callers' ids cannot collide."""
        return self.add(request.lora_name, request.lora_path)

    def remove(self, name: str) -> LoRARequest:
        with self._lock:
            request = self._by_name.pop(name, None)
        if request is None:
            raise KeyError(name)
        return request

    def get(self, name: str) -> LoRARequest | None:
        return self._by_name.get(name)

    def names(self) -> list[str]:
        return sorted(self._by_name)
