"""How much new work the engine can start now: the back-pressure a replica pulls against.

A replica takes requests off a shared queue only as fast as its engine can run them, so a
burst must be admitted as a burst (not one request per engine step) and yet never beyond
the free batch slots and KV blocks, or the queued work would sit on a replica that cannot
run it while others could.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def blocks_needed(num_tokens: int, block_size: int, window_blocks: Sequence[int]) -> int:
    """KV blocks a fresh request of num_tokens holds across groups (a sliding group with a
    window of w blocks holds at most w + 1 of them)."""
    full = cdiv(num_tokens, block_size)
    return sum(min(full, w + 1) if w else full for w in window_blocks)


@dataclass(frozen=True)
class AdmissionCapacity:
    """Up to `num_requests` more sequences can start now if their KV blocks (each prompt's,
    plus one decode block) fit in `kv_blocks`; prefix-cache hits are not counted on, so
    this never over-admits."""

    num_requests: int
    kv_blocks: int
    block_size: int
    window_blocks: tuple[int, ...]  # per KV group: blocks its sliding window needs, 0 = full

    @classmethod
    def none(cls) -> AdmissionCapacity:
        """No room (engine stopped, draining or not started)."""
        return cls(num_requests=0, kv_blocks=0, block_size=1, window_blocks=(0,))

    def cost_blocks(self, num_prompt_tokens: int) -> int:
        return blocks_needed(num_prompt_tokens, self.block_size, self.window_blocks) + 1

    def admits(self, prompt_lens: Sequence[int]) -> bool:
        """Could all these prompts start now, together?"""
        if len(prompt_lens) > self.num_requests:
            return False
        return sum(self.cost_blocks(n) for n in prompt_lens) <= self.kv_blocks

    def after(self, prompt_lens: Sequence[int]) -> AdmissionCapacity:
        """What is left once these prompts (already promised to the engine) start."""
        return dataclasses.replace(
            self,
            num_requests=self.num_requests - len(prompt_lens),
            kv_blocks=self.kv_blocks - sum(self.cost_blocks(n) for n in prompt_lens),
        )

    @property
    def num_tokens(self) -> int:
        """The longest single prompt that fits now (0 when none does)."""
        if not self.admits([1]):
            return 0
        low, high = 1, max(1, self.kv_blocks) * self.block_size
        while low < high:  # largest n with admits([n]); cost is monotone in n
            middle = (low + high + 1) // 2
            low, high = (middle, high) if self.admits([middle]) else (low, middle - 1)
        return low
