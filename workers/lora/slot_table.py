"""The scheduler's view of the device slots: which adapter sits where, and who uses it.

Invariant kept here and in the scheduler: the running requests use at most `max_loras`
distinct adapters, so every step (which runs every running request it has budget for)
mixes at most `max_loras` adapters and each has a slot. An adapter keeps its slot after
its last request ends (the next one needs no load); a new adapter takes a never-used
slot, else the least recently released one. Torch-free: slots are numbers here, the
runner moves the weights when a SchedulerOutput says `lora_loads`.
"""

from __future__ import annotations

from collections import OrderedDict

from oss_serve.workers.lora.request import LoRARequest


class AdapterSlotTable:
    def __init__(self, max_loras: int) -> None:
        if max_loras < 1:
            raise ValueError(f"max_loras must be >= 1, got {max_loras}")
        self.max_loras = max_loras
        self._slot_of: dict[int, int] = {}  # adapter id -> slot
        self._adapter_in: dict[int, LoRARequest] = {}  # slot -> adapter
        self._users: dict[int, int] = {}  # adapter id -> running requests
        self._idle: OrderedDict[int, None] = OrderedDict()  # loaded slots nobody uses, LRU first
        self._forgotten: set[int] = set()  # unloaded while running: freed when they finish
        self.loads = 0

    @property
    def active_adapters(self) -> int:
        """Distinct adapters of the running requests."""
        return len(self._users)

    def can_start(self, lora: LoRARequest | None) -> bool:
        """Would a request of `lora` keep the running set within max_loras adapters?"""
        if lora is None or lora.lora_int_id in self._users:
            return True
        return len(self._users) < self.max_loras

    def acquire(self, lora: LoRARequest) -> tuple[int, bool]:
        """(slot, needs loading) for one more running request of `lora`."""
        users = self._users.get(lora.lora_int_id, 0)
        slot = self._slot_of.get(lora.lora_int_id)
        load = slot is None
        if slot is None:
            slot = self._free_slot()
            self._slot_of[lora.lora_int_id] = slot
            self._adapter_in[slot] = lora
            self.loads += 1
        self._idle.pop(slot, None)
        self._users[lora.lora_int_id] = users + 1
        return slot, load

    def release(self, lora: LoRARequest) -> None:
        """One running request of `lora` stopped (finished, aborted or preempted)."""
        users = self._users.get(lora.lora_int_id, 0) - 1
        if users > 0:
            self._users[lora.lora_int_id] = users
            return
        self._users.pop(lora.lora_int_id, None)
        slot = self._slot_of.get(lora.lora_int_id)
        if slot is not None:
            self._idle[slot] = None
        if lora.lora_int_id in self._forgotten:
            self.forget(lora.lora_int_id)

    def forget(self, lora_int_id: int) -> None:
        """An unloaded adapter: its slot is free once nobody uses it (now, if idle)."""
        slot = self._slot_of.get(lora_int_id)
        if lora_int_id in self._users:
            self._forgotten.add(lora_int_id)
        elif slot is not None:
            self._forgotten.discard(lora_int_id)
            del self._slot_of[lora_int_id]
            del self._adapter_in[slot]
            self._idle.pop(slot, None)

    def held(self) -> list[LoRARequest]:
        """Adapters in device slots, by slot."""
        return [self._adapter_in[slot] for slot in sorted(self._adapter_in)]

    def _free_slot(self) -> int:
        for slot in range(self.max_loras):
            if slot not in self._adapter_in:
                return slot
        if not self._idle:
            raise RuntimeError("no adapter slot is free: more adapters run than max_loras")
        slot, _ = self._idle.popitem(last=False)
        evicted = self._adapter_in.pop(slot)
        del self._slot_of[evicted.lora_int_id]
        return slot
