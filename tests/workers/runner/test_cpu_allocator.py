"""The CPU runner's malloc settings: a step-sized buffer comes from the heap, and the heap
keeps it after it is freed (nothing to fault in again on the next step)."""

from __future__ import annotations

import ctypes
import ctypes.util
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

# glibc's mallinfo2: bytes held in the heap (arena) and in separate mmaps (hblkhd)
SCRIPT = """
import ctypes, ctypes.util, sys, torch
from oss_serve.workers.runner.cpu_allocator import keep_step_buffers_in_heap
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "tuned":
    assert keep_step_buffers_in_heap()
before = libc.mallinfo2()
buffer = torch.empty(4 << 20)  # 16 MB, as a decode step's gathered keys
buffer.fill_(1.0)
mapped = libc.mallinfo2().hblkhd - before.hblkhd
del buffer
print(mapped, libc.mallinfo2().arena - before.arena)
"""


def _heap_after_a_step(mode: str) -> tuple[int, int]:
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True
    )
    mapped, arena = run.stdout.split()
    return int(mapped), int(arena)


def _has_mallinfo2() -> bool:
    name = ctypes.util.find_library("c")
    return name is not None and hasattr(ctypes.CDLL(name), "mallinfo2")


@pytest.mark.skipif(not _has_mallinfo2(), reason="glibc >= 2.33 (mallopt, mallinfo2)")
def test_step_buffers_come_from_the_heap_and_stay_there():
    """(bytes newly mmapped for the buffer, bytes the heap grew by and kept)"""
    mapped, kept = _heap_after_a_step("default")
    assert mapped >= 16 << 20 and kept < 16 << 20  # its own mmap, unmapped when freed
    mapped, kept = _heap_after_a_step("tuned")
    assert mapped < 16 << 20 and kept >= 16 << 20  # in the heap, kept after the free
