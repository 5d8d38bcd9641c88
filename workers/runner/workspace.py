"""Big per-step tensors (logits, probabilities: rows x 201088) kept across engine steps.

On CPU a fresh tensor of that size costs more than the operation that fills it: large
allocations are fresh pages from the kernel (mmap, or a thread arena's heap that is trimmed
again after each free), so every step would page-fault and zero tens of megabytes. The
engine thread reuses these buffers instead; what uses a view must be done with it before
the next step asks for the same name.
"""

from __future__ import annotations

import torch


class Workspace:
    """Named flat buffers, grown when a larger view is asked for, never shrunk."""

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def take(
        self, name: str, rows: int, cols: int, dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        """A [rows, cols] view of the buffer `name` (uninitialised contents)."""
        size = rows * cols
        buffer = self._buffers.get(name)
        if (
            buffer is None
            or buffer.numel() < size
            or buffer.dtype != dtype
            or buffer.device != device
        ):
            buffer = torch.empty(size, dtype=dtype, device=device)
            self._buffers[name] = buffer
        return buffer[:size].view(rows, cols)

    def like(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """A view of the buffer `name` with the shape, dtype and device of a 2-D tensor."""
        rows, cols = tensor.shape
        return self.take(name, rows, cols, tensor.dtype, tensor.device)
